"""Projection and prediction heads: one small MLP builder covers the heads of SimCLR,
MoCo v2/v3, BYOL, SimSiam, SwAV, Barlow Twins and VICReg; DINO's head has its own shape."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def mlp(dims: Sequence[int], *, norm: bool = True, last_norm: str = "none", act: str = "relu",
        bias: bool = True) -> nn.Sequential:
    """Linear layers through ``dims`` (e.g. [2048, 4096, 256]): each hidden layer is
    Linear -> BatchNorm1d (if ``norm``) -> activation. ``last_norm`` adds a BatchNorm1d after
    the output layer: "none", "affine" (MoCo v3) or "plain" (SimSiam's projector output,
    affine=False). A one-layer ``dims`` ([in, out]) is a linear head (InstDisc, MoCo v1)."""
    if len(dims) < 2:
        raise ValueError(f"mlp needs at least [in, out] dims, got {list(dims)}")
    if last_norm not in ("none", "affine", "plain"):
        raise ValueError(f"last_norm={last_norm!r}: expected none, affine or plain")
    activation = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}[act]
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=bias and not (norm and not last)))
        if not last:
            if norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(activation())
    if last_norm != "none":
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_norm == "affine"))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, App. / official vision_transformer.py):
    a 3-layer MLP (GELU) to a ``bottleneck`` dim, L2 normalisation, then a weight-normalised
    linear layer to ``out_dim`` prototypes whose norm is fixed to 1 (``norm_last_layer``).
    ``use_bn`` puts BatchNorm after each hidden layer (official ``--use_bn_in_head``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256,
                 norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()
        self.mlp = mlp([in_dim, hidden, hidden, bottleneck], norm=use_bn, act="gelu")
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))

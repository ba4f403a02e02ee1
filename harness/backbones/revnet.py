"""RevNet-50 (Gomez et al. 2017) as the Revisiting study uses it (Kolesnikov et al. 2019):
ResNet-50 v2's stages [3, 4, 6, 3] with reversible bottleneck units, the channels split in two
halves, and pool-and-pad between stages.

A reversible unit maps (x1, x2) to (y1, y2) = (x1 + F(x2), x2 + G(y1)), so its input can be
recomputed from its output: x2 = y2 - G(y1), x1 = y1 - F(x2). With ``memory_saving`` each stage
runs its units under ``torch.no_grad`` and keeps only the stage's output; the backward pass
walks the units in reverse, reconstructing each input and differentiating one unit at a time,
so activation memory is that of one unit whatever the depth. No maintained library provides
this for PyTorch (memcnn and RevTorch are unmaintained), hence the hand-written Function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UsageError


class _PreactBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 on ``channels`` (one half)."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, bottleneck, 1, bias=False),
            nn.BatchNorm2d(bottleneck), nn.ReLU(), nn.Conv2d(bottleneck, bottleneck, 3, padding=1, bias=False),
            nn.BatchNorm2d(bottleneck), nn.ReLU(), nn.Conv2d(bottleneck, channels, 1, bias=False),
        )

    def forward(self, x):
        return self.body(x)


class ReversibleUnit(nn.Module):
    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        half = channels // 2
        self.f = _PreactBottleneck(half, bottleneck // 2)
        self.g = _PreactBottleneck(half, bottleneck // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y.chunk(2, dim=1)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=1)


class _frozen_bn_stats:
    """BatchNorm running statistics untouched while a unit is recomputed in the backward
    pass (the forward pass already updated them once)."""

    def __init__(self, module: nn.Module):
        self.bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
                      for m in self.bns]
        for m in self.bns:
            m.momentum = 0.0

    def __exit__(self, *exc):
        for m, (momentum, tracked) in zip(self.bns, self.saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class _ReversibleStage(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, units, *params):
        ctx.units = units
        with torch.no_grad():
            for unit in units:
                x = unit(x)
        ctx.save_for_backward(x)  # the stage output only
        return x

    @staticmethod
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        units = ctx.units
        params = [p for u in units for p in u.parameters()]
        grads = {id(p): None for p in params}
        for unit in reversed(units):
            with torch.no_grad(), _frozen_bn_stats(unit):
                x = unit.inverse(y)
            with torch.enable_grad(), _frozen_bn_stats(unit):
                x = x.detach().requires_grad_(True)
                out = unit(x)
                unit_params = [p for p in unit.parameters() if p.requires_grad]
                got = torch.autograd.grad(out, [x, *unit_params], grad_y, allow_unused=True)
            grad_y = got[0]
            for p, g in zip(unit_params, got[1:]):
                grads[id(p)] = g
            y = x.detach()
        return (grad_y, None, *[grads[id(p)] for p in params])


def _pool_and_pad(x: torch.Tensor, out_channels: int, stride: int) -> torch.Tensor:
    """Between stages: average-pool to the new resolution and zero-pad the channels, keeping
    the two halves aligned (each half is padded)."""
    if stride > 1:
        x = F.avg_pool2d(x, stride, ceil_mode=True)  # a 1x1 map (small patches) stays 1x1
    extra = out_channels - x.shape[1]
    if extra:
        x1, x2 = x.chunk(2, dim=1)
        x1, x2 = F.pad(x1, (0, 0, 0, 0, 0, extra // 2)), F.pad(x2, (0, 0, 0, 0, 0, extra // 2))
        x = torch.cat([x1, x2], dim=1)
    return x


class RevNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), width: float = 1, small_input: bool = False, memory_saving: bool = True,
                 in_chans: int = 3):
        super().__init__()
        if width <= 0:
            raise UsageError(f"backbone.width={width}: expected a positive multiplier")
        self.memory_saving = memory_saving
        stem = int(round(64 * width))
        stem = stem + stem % 2
        if small_input:
            self.stem = nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False)
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1))
        chans = [2 * (int(round(c * width)) // 2) for c in (256, 512, 1024, 2048)]
        self.stage_channels = chans
        self.strides = (1, 2, 2, 2)
        self.stages = nn.ModuleList(
            nn.ModuleList(ReversibleUnit(c, c // 4) for _ in range(n))
            for c, n in zip(chans, layers))
        self.final_norm = nn.Sequential(nn.BatchNorm2d(chans[-1]), nn.ReLU())
        self.num_features = chans[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _run_stage(self, units: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        # The first unit of a stage keeps its activations: its input carries the zero-padded
        # channels, whose batch variance is exactly zero, and BatchNorm would divide the
        # reconstruction's round-off there by sqrt(eps) (float32 gradients off by ~7 %).
        # Every later unit's input is reconstructed; memory stays one unit per stage.
        x = units[0](x)
        rest = units[1:]
        if self.memory_saving and torch.is_grad_enabled() and self.training and len(rest):
            params = [p for u in rest for p in u.parameters()]
            return _ReversibleStage.apply(x, rest, *params)
        for unit in rest:
            x = unit(x)
        return x

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = self.stem(x)
        for i, (units, c, s) in enumerate(zip(self.stages, self.stage_channels, self.strides), start=1):
            x = self._run_stage(units, _pool_and_pad(x, c, s))
            out[f"block{i}"] = x
        x = self.final_norm(x)
        out["pre_logits"] = torch.flatten(self.pool(x), 1)
        return out

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for units, c, s in zip(self.stages, self.stage_channels, self.strides):
            x = self._run_stage(units, _pool_and_pad(x, c, s))
        return self.final_norm(x)

    def forward_block(self, x: torch.Tensor, block: int) -> torch.Tensor:
        return self.forward_stages(x)[f"block{block}"]

    def block_channels(self, block: int) -> int:
        return self.stage_channels[block - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.forward_maps(x)), 1)


def revnet50(width: float = 1, small_input: bool = False, memory_saving: bool = True) -> RevNet:
    """RevNet-50 (Gomez et al. 2017; Kolesnikov et al. 2019): reversible bottlenecks, no
    stored activations inside a stage."""
    return RevNet((3, 4, 6, 3), width=width, small_input=small_input, memory_saving=memory_saving)


revnet50.description = "RevNet-50 (Gomez et al. 2017, as Kolesnikov et al. 2019): reversible units, width multiplier"

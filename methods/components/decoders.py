"""Decoders that map a backbone's feature maps back to pixels (reconstruction methods)."""
from __future__ import annotations

import math

import torch
from torch import nn


class ConvDecoder(nn.Module):
    """[B, C, h, w] maps -> [B, out, h * 2**k, w * 2**k]: k (upsample, conv, norm, ReLU)
    steps halving the channels, then a 3x3 conv to ``out`` channels.

    ``k`` is chosen from the backbone's actual output stride, so one decoder serves any
    backbone and input size.
    """

    def __init__(self, in_channels: int, in_size: int, out_size: int, out_channels: int = 3, min_channels: int = 16):
        super().__init__()
        ratio = out_size / in_size
        steps = int(round(math.log2(ratio)))
        if 2 ** steps * in_size != out_size:
            raise ValueError(f"cannot decode {in_size}px maps to {out_size}px images by doubling")
        layers, c = [], in_channels
        for _ in range(steps):
            nxt = max(c // 2, min_channels)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, nxt, 3, padding=1),
                       nn.GroupNorm(1, nxt), nn.ReLU(inplace=True)]
            c = nxt
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.net(maps)


def feature_map_size(backbone: nn.Module, image_size: int) -> tuple[int, int]:
    """(channels, side) of ``backbone.forward_maps`` for a square ``image_size`` input."""
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        maps = backbone.forward_maps(torch.zeros(1, 3, image_size, image_size))
    backbone.train(was)
    return maps.shape[1], maps.shape[-1]

"""ResNet v2 (pre-activation; He et al. 2016b) through timm's ``ResNetV2``, at any width.

timm's ``width_factor`` is an integer; channels and stem are passed explicitly instead so
fractional widths work too (0.5x for the embedded suite). Batch norm and plain convolutions,
as ``timm.models.resnetv2_50`` (not BiT's group norm and weight standardisation).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from timm.layers import BatchNormAct2d, create_conv2d
from timm.models.resnetv2 import ResNetV2
from torch import nn

from harness.errors import UsageError


class ResNetV2Backbone(nn.Module):
    def __init__(self, layers, width: float = 1, small_input: bool = False):
        super().__init__()
        if width <= 0:
            raise UsageError(f"backbone.width={width}: expected a positive multiplier")
        chans = tuple(int(round(c * width)) for c in (256, 512, 1024, 2048))
        stem = int(round(64 * width))
        self.net = ResNetV2(layers, channels=chans, stem_chs=stem, num_classes=0, conv_layer=create_conv2d,
                            norm_layer=BatchNormAct2d, preact=True)
        if small_input:
            # A 3x3/1 stem for 32px inputs (as the v1 CIFAR stem): 7x7/2 + pool leaves 8x8 maps.
            self.net.stem = nn.Sequential(OrderedDict(conv=create_conv2d(3, stem, 3, stride=1)))
        self.num_features = chans[-1]
        self._block_channels = list(chans)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = self.net.stem(x)
        for i, stage in enumerate(self.net.stages, start=1):
            x = stage(x)
            out[f"block{i}"] = x
        x = self.net.norm(x)  # the final pre-activation BN-ReLU
        out["pre_logits"] = x.mean(dim=(2, 3))
        return out

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward_block(self, x: torch.Tensor, block: int) -> torch.Tensor:
        x = self.net.stem(x)
        for stage in list(self.net.stages)[:block]:
            x = stage(x)
        return x

    def block_channels(self, block: int) -> int:
        return self._block_channels[block - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x).mean(dim=(2, 3))


def resnet50_v2(width: float = 1, small_input: bool = False) -> ResNetV2Backbone:
    """ResNet-50 v2, pre-activation (He et al. 2016b), width multiplier."""
    return ResNetV2Backbone([3, 4, 6, 3], width=width, small_input=small_input)


resnet50_v2.description = "ResNet-50 v2, pre-activation (He et al. 2016b, timm), width multiplier"

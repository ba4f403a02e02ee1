"""ResNet v2 (pre-activation; He et al. 2016b) through timm's ``ResNetV2``, at any width,
and CPC v2's ResNet-161 encoder built from the same timm stages.

timm's ``width_factor`` is an integer; channels and stem are passed explicitly instead so
fractional widths work too (0.5x for the embedded suite). Batch norm and plain convolutions
by default, as ``timm.models.resnetv2_50`` (not BiT's group norm and weight standardisation).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from timm.layers import BatchNormAct2d, GroupNormAct, create_conv2d, get_norm_act_layer
from timm.models.resnetv2 import PreActBottleneck, ResNetStage, ResNetV2
from torch import nn

from harness.backbones.resnet import NORMS
from harness.errors import UsageError

STANDARD_CHANNELS = (256, 512, 1024, 2048)


def norm_act_layer(kind: str):
    """timm norm+ReLU layers for ``backbone.norm`` (the same choices as the v1 ResNets)."""
    if kind == "batch":
        return BatchNormAct2d
    if kind == "layer":
        # Over (C, H, W) per sample: CPC v2's layer norm (Hénaff et al. 2019, Sec. 4.1).
        return partial(GroupNormAct, num_groups=1)
    if kind == "group":
        return lambda c, **kw: GroupNormAct(c, num_groups=min(32, c), **kw)
    raise UsageError(f"backbone.norm={kind!r}: expected one of {', '.join(NORMS)}")


class ResNetV2Backbone(nn.Module):
    """Pre-activation bottleneck stages ``layers`` with output ``channels`` (scaled by
    ``width``); ``bottle_ratios`` gives each stage's bottleneck width as a fraction of its
    output (0.25 in standard ResNets)."""

    def __init__(self, layers, width: float = 1, small_input: bool = False, norm: str = "batch",
                 channels=STANDARD_CHANNELS, bottle_ratios=None):
        super().__init__()
        if width <= 0:
            raise UsageError(f"backbone.width={width}: expected a positive multiplier")
        norm_layer = norm_act_layer(norm)
        chans = tuple(int(round(c * width)) for c in channels)
        ratios = tuple(bottle_ratios or (0.25,) * len(layers))
        stem = int(round(64 * width))
        # timm takes one bottleneck ratio for every stage: it builds the leading stages that
        # share the first ratio, and the rest are appended here with their own.
        same = next((i for i, r in enumerate(ratios) if r != ratios[0]), len(ratios))
        self.net = ResNetV2(list(layers[:same]), channels=chans[:same], stem_chs=stem, num_classes=0,
                            conv_layer=create_conv2d, norm_layer=norm_layer, preact=True, bottle_ratio=ratios[0])
        if same < len(layers):
            act_norm = get_norm_act_layer(norm_layer, act_layer=nn.ReLU)
            for i in range(same, len(layers)):
                self.net.stages.add_module(str(i), ResNetStage(
                    chans[i - 1], chans[i], stride=2, dilation=1, depth=layers[i], bottle_ratio=ratios[i],
                    block_fn=PreActBottleneck, act_layer=nn.ReLU, conv_layer=create_conv2d, norm_layer=act_norm))
            self.net.norm = act_norm(chans[-1])  # the final pre-activation, at the new width
            self.net.num_features = self.net.head_hidden_size = chans[-1]
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
        x = self.net.stem(x)
        return self.net.norm(self.net.stages(x))

    def forward_block(self, x: torch.Tensor, block: int) -> torch.Tensor:
        x = self.net.stem(x)
        for stage in list(self.net.stages)[:block]:
            x = stage(x)
        return x

    def block_channels(self, block: int) -> int:
        return self._block_channels[block - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x).mean(dim=(2, 3))


def resnet50_v2(width: float = 1, small_input: bool = False, norm: str = "batch") -> ResNetV2Backbone:
    """ResNet-50 v2, pre-activation (He et al. 2016b), width multiplier."""
    return ResNetV2Backbone([3, 4, 6, 3], width=width, small_input=small_input, norm=norm)


resnet50_v2.description = "ResNet-50 v2, pre-activation (He et al. 2016b, timm), width multiplier"


def resnet161_cpc(width: float = 1, small_input: bool = False, norm: str = "layer") -> ResNetV2Backbone:
    """CPC v2's patch encoder (Hénaff et al. 2019, Sec. 4.1 "Model capacity"): the first three
    stacks of ResNet-v2-101 (CPC v1's encoder, van den Oord et al. 2018, Sec. 3.2) with the
    third grown from 23 blocks, 1024-d maps and 256-d bottlenecks to 46 blocks, 4096-d maps and
    512-d bottlenecks: 3 x (3 + 4 + 46) + 2 = 161 layers. Layer norm in place of batch norm,
    as the paper trains it; mean-pooled to 4096 features."""
    return ResNetV2Backbone([3, 4, 46], width=width, small_input=small_input, norm=norm,
                            channels=(256, 512, 4096), bottle_ratios=(0.25, 0.25, 0.125))


resnet161_cpc.description = ("CPC v2 encoder, ResNet-161 (Hénaff et al. 2019): ResNet-v2-101's first three stacks, "
                             "the third with 46 blocks, 512-d bottlenecks, 4096-d output; layer norm")

"""ResNet v1 (He et al. 2016) with a channel width multiplier and a choice of normalisation.

torchvision's residual blocks are reused; only the stage layout is rebuilt here, because
torchvision fixes the stage widths (64..512) while SSL studies scale them (Kolesnikov et
al. 2019; SimCLR's 2x/4x).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from harness.errors import UsageError

NORMS = ("batch", "layer", "group")


def norm_layer(kind: str):
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "layer":
        # Layer norm over (C, H, W) per sample, as CPC v2 uses to stop patches of one image
        # communicating through batch statistics (Hénaff et al. 2019, Sec. 4.1).
        return partial(nn.GroupNorm, 1)
    if kind == "group":
        return lambda c: nn.GroupNorm(min(32, c), c)
    raise UsageError(f"backbone.norm={kind!r}: expected one of {', '.join(NORMS)}")


class ResNet(nn.Module):
    def __init__(self, block, layers, width: float = 1, base: int = 64, norm: str = "batch", small_input: bool = False,
                 in_chans: int = 3, zero_init_residual: bool = False):
        super().__init__()
        if width <= 0:
            raise UsageError(f"backbone.width={width}: expected a positive multiplier")
        norm_fn = norm_layer(norm)
        self._norm = norm_fn
        self.inplanes = int(round(base * width))
        if small_input:
            # CIFAR-style stem for 32px inputs: a 7x7/2 conv and max-pool would leave 8x8 maps.
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, self.inplanes, 3, 1, 1, bias=False), norm_fn(self.inplanes), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, self.inplanes, 7, 2, 3, bias=False), norm_fn(self.inplanes), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        widths = [int(round(base * width * m)) for m in (1, 2, 4, 8)]
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2)
        self.num_features = widths[3] * block.expansion
        self._block_channels = [w * block.expansion for w in widths]
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each residual branch starts as zero, so every block begins as the identity
            # (Goyal et al. 2017): what torchvision's flag does, and what several SSL codes set.
            for m in self.modules():
                last = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last is not None and getattr(last, "weight", None) is not None:
                    nn.init.zeros_(last.weight)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                self._norm(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer=self._norm)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, norm_layer=self._norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_block(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """The output maps of stage ``block`` (1..4), the Revisiting study's block1..block4."""
        x = self.stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4)[:block]:
            x = stage(x)
        return x

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's maps (``block1``..``block4``) and the pooled output (``pre_logits``)
        from one pass: multi-layer probes read them all at the cost of one forward."""
        out = {}
        x = self.stem(x)
        for i, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            x = stage(x)
            out[f"block{i}"] = x
        out["pre_logits"] = torch.flatten(self.pool(x), 1)
        return out

    def block_channels(self, block: int) -> int:
        return self._block_channels[block - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.forward_maps(x)), 1)


def resnet18(width: float = 1, norm: str = "batch", small_input: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 v1 (He et al. 2016) with a width multiplier."""
    return ResNet(BasicBlock, [2, 2, 2, 2], width=width, norm=norm, small_input=small_input, zero_init_residual=zero_init_residual)


def resnet34(width: float = 1, norm: str = "batch", small_input: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34 v1 (He et al. 2016) with a width multiplier."""
    return ResNet(BasicBlock, [3, 4, 6, 3], width=width, norm=norm, small_input=small_input, zero_init_residual=zero_init_residual)


def resnet101(width: float = 1, norm: str = "batch", small_input: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-101 v1 (He et al. 2016) with a width multiplier."""
    return ResNet(Bottleneck, [3, 4, 23, 3], width=width, norm=norm, small_input=small_input, zero_init_residual=zero_init_residual)


def resnet152(width: float = 1, norm: str = "batch", small_input: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-152 v1 (He et al. 2016) with a width multiplier."""
    return ResNet(Bottleneck, [3, 8, 36, 3], width=width, norm=norm, small_input=small_input, zero_init_residual=zero_init_residual)


def resnet50(width: float = 1, norm: str = "batch", small_input: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 v1 (He et al. 2016) with a width multiplier (SimCLR's 1x/2x/4x)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width=width, norm=norm, small_input=small_input, zero_init_residual=zero_init_residual)


def resnet_small(width: float = 1, norm: str = "batch", small_input: bool = True, zero_init_residual: bool = False) -> ResNet:
    """A CPU-friendly ResNet (one basic block per stage, 32..256 channels) for the embedded suite."""
    return ResNet(BasicBlock, [1, 1, 1, 1], width=width, base=32, norm=norm, small_input=small_input,
                  zero_init_residual=zero_init_residual)


resnet18.description = "ResNet-18 v1 (He et al. 2016), width multiplier"
resnet50.description = "ResNet-50 v1 (He et al. 2016), width multiplier"
resnet34.description = "ResNet-34 v1 (He et al. 2016), width multiplier"
resnet101.description = "ResNet-101 v1 (He et al. 2016), width multiplier"
resnet152.description = "ResNet-152 v1 (He et al. 2016), width multiplier"
resnet_small.description = "small ResNet (1 block/stage, 32-256 ch) for CPU runs on the embedded suite"

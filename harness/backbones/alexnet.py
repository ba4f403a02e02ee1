"""The one-tower AlexNet of the RotNet / Jigsaw / colorization literature (Krizhevsky et al.
2012 without the two-GPU grouping; Gidaris et al. 2018's ``AlexNet.py``): conv1-conv5 with
96-256-384-384-256 filters, then fc6 and fc7 (4096), with batch norm after every layer in
the BN variant (RotNet's) or none (``norm="none"``, the original)."""
from __future__ import annotations

import torch
from torch import nn

from harness.errors import UsageError


def _conv(cin, cout, k, s, p, bn):
    layers = [nn.Conv2d(cin, cout, k, s, p, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU(inplace=True)]


class AlexNet(nn.Module):
    def __init__(self, width: float = 1, norm: str = "batch", small_input: bool = False):
        super().__init__()
        if norm not in ("batch", "none"):
            raise UsageError(f"backbone.norm={norm!r}: alexnet takes batch or none")
        if width <= 0:
            raise UsageError(f"backbone.width={width}: expected a positive multiplier")
        bn = norm == "batch"
        c = [int(round(v * width)) for v in (96, 256, 384, 384, 256)]
        # 11x11/4 on 224px; a 3x3/1 first layer keeps 32px inputs from collapsing to 1x1.
        k1, s1, p1 = (3, 1, 1) if small_input else (11, 4, 2)
        pool = nn.MaxPool2d(3, 2, 1) if small_input else nn.MaxPool2d(3, 2)
        self.conv1 = nn.Sequential(*_conv(3, c[0], k1, s1, p1, bn), pool)
        self.conv2 = nn.Sequential(*_conv(c[0], c[1], 5, 1, 2, bn),
                                   nn.MaxPool2d(3, 2, 1) if small_input else nn.MaxPool2d(3, 2))
        self.conv3 = nn.Sequential(*_conv(c[1], c[2], 3, 1, 1, bn))
        self.conv4 = nn.Sequential(*_conv(c[2], c[3], 3, 1, 1, bn))
        self.conv5 = nn.Sequential(*_conv(c[3], c[4], 3, 1, 1, bn),
                                   nn.MaxPool2d(3, 2, 1) if small_input else nn.MaxPool2d(3, 2))
        fc = int(round(4096 * width))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        fc_layers = [nn.Linear(c[4] * 36, fc, bias=not bn)] + ([nn.BatchNorm1d(fc)] if bn else []) + [nn.ReLU(True)]
        fc_layers += [nn.Linear(fc, fc, bias=not bn)] + ([nn.BatchNorm1d(fc)] if bn else []) + [nn.ReLU(True)]
        self.fc = nn.Sequential(*fc_layers)
        self.num_features = fc
        self._block_channels = c

    def _convs(self):
        return (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._convs():
            x = layer(x)
        return x

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """conv1..conv5 (as ``block1``..``block5``, the RotNet/Jigsaw multi-layer probes) and
        fc7 (``pre_logits``)."""
        out = {}
        for i, layer in enumerate(self._convs(), start=1):
            x = layer(x)
            out[f"block{i}"] = x
        out["pre_logits"] = self.fc(torch.flatten(self.avgpool(x), 1))
        return out

    def forward_block(self, x: torch.Tensor, block: int) -> torch.Tensor:
        for layer in self._convs()[:block]:
            x = layer(x)
        return x

    def block_channels(self, block: int) -> int:
        return self._block_channels[block - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_maps(x)), 1))


def alexnet(width: float = 1, norm: str = "batch", small_input: bool = False) -> AlexNet:
    """One-tower AlexNet (96-256-384-384-256, fc 4096), batch-norm variant by default."""
    return AlexNet(width=width, norm=norm, small_input=small_input)


alexnet.description = "one-tower AlexNet (RotNet/Jigsaw literature), BN variant by default (norm=none: original)"

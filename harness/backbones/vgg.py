"""VGG-19 with batch norm (Simonyan & Zisserman 2015), at any width, through torchvision's
``make_layers``: conv1-conv5 stages, then fc6 and fc7 (the pre-logits representation) as in
torchvision's ``vgg19_bn`` without its last 1000-way layer, and without dropout (an SSL
backbone is probed, not regularised for ImageNet classification)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from harness.errors import UsageError


class VGG(nn.Module):
    def __init__(self, cfg: str = "E", width: float = 1, fc_dim: int = 4096):
        super().__init__()
        if width <= 0:
            raise UsageError(f"backbone.width={width}: expected a positive multiplier")
        layout = [v if v == "M" else int(round(v * width)) for v in cfgs[cfg]]
        self.features = make_layers(layout, batch_norm=True)
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                m.ceil_mode = True  # small inputs (6-8 px patches) keep a 1x1 map; even sizes are unchanged
        last = [v for v in layout if v != "M"][-1]
        fc = int(round(fc_dim * width))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.fc = nn.Sequential(nn.Linear(last * 49, fc), nn.ReLU(True), nn.Linear(fc, fc), nn.ReLU(True))
        self.num_features = fc
        # Stage ends (after each max-pool) for multi-layer probes: conv1..conv5.
        self._stage_ends = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._block_channels = [layout[i - 1] for i, v in enumerate(layout) if v == "M"]
        self._init_like_torchvision()

    def _init_like_torchvision(self) -> None:
        # torchvision.models.VGG's init_weights. PyTorch's default conv init shrinks the signal
        # about threefold per layer while the biases do not shrink, so after 16 conv layers an
        # untrained network in eval mode (BN running stats at 0/1) gave the same features for
        # every image, and short runs and `--epochs 0` baselines probed at chance.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for i, end in enumerate(self._stage_ends, start=1):
            x = self.features[start:end + 1](x)
            out[f"block{i}"] = x
            start = end + 1
        out["pre_logits"] = self.fc(torch.flatten(self.avgpool(x), 1))
        return out

    def forward_block(self, x: torch.Tensor, block: int) -> torch.Tensor:
        return self.features[:self._stage_ends[block - 1] + 1](x)

    def block_channels(self, block: int) -> int:
        return self._block_channels[block - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg19_bn(width: float = 1) -> VGG:
    """VGG-19 with batch norm, fc6/fc7 pre-logits, width multiplier."""
    return VGG("E", width=width)


vgg19_bn.description = "VGG-19 with batch norm (Simonyan & Zisserman 2015), fc7 pre-logits, width multiplier"

"""Split-brain autoencoders: two disjoint half-width networks predict each other's colour
channels, L -> ab and ab -> L, as classification; their features are concatenated
(Zhang, Isola & Efros, CVPR 2017)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import Config, P
from harness.data.transforms import crop_flip_transform, denormalize
from methods.base import Method
from methods.components.color import AB_RANGE, gamut_bins, rgb_to_lab
from methods.components.decoders import ConvDecoder, feature_map_size

ZHANG17 = "Zhang, Isola & Efros 2017"


def split_brain_loss(ab_logits: torch.Tensor, ab_bins: torch.Tensor, l_logits: torch.Tensor, l_bins: torch.Tensor) -> torch.Tensor:
    """Sum of the two cross-channel classification losses. ab_logits: [B, Q_ab, H, W] with
    targets ab_bins [B, H, W]; l_logits: [B, Q_L, H, W] with targets l_bins [B, H, W]."""
    return F.cross_entropy(ab_logits, ab_bins) + F.cross_entropy(l_logits, l_bins)


def lab_inputs(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lab [B, 3, H, W] -> (L as a centred 3-channel input, ab scaled to [-1, 1] plus a zero channel)."""
    l_in = ((lab[:, :1] - 50.0) / 50.0).expand(-1, 3, -1, -1)
    ab_in = torch.cat([lab[:, 1:] / AB_RANGE, torch.zeros_like(lab[:, :1])], dim=1)
    return l_in, ab_in


class SplitBrainEncoder(nn.Module):
    """The two halves as one backbone: ImageNet-normalised RGB in, concatenated features out."""

    def __init__(self, l_net: nn.Module, ab_net: nn.Module):
        super().__init__()
        self.l_net, self.ab_net = l_net, ab_net
        self.num_features = l_net.num_features + ab_net.num_features

    def _inputs(self, x):
        return lab_inputs(rgb_to_lab(denormalize(x)))

    def forward_maps(self, x):
        l_in, ab_in = self._inputs(x)
        return torch.cat([self.l_net.forward_maps(l_in), self.ab_net.forward_maps(ab_in)], dim=1)

    def forward(self, x):
        l_in, ab_in = self._inputs(x)
        return torch.cat([self.l_net(l_in), self.ab_net(ab_in)], dim=1)


class SplitBrain(Method):
    name = "split_brain"
    family = "reconstruction"
    description = "Split-brain autoencoder: half-width networks predict L->ab and ab->L by classification"
    source = "Zhang, Isola & Efros, CVPR 2017"
    probes_blocks = False  # its representation is not one backbone pass over the image
    recipes = {
        "default": {
            "backbone.name": P("resnet50", "harness choice (the paper uses AlexNet)"),
            "method.ab_grid": P(10, f"{ZHANG17}, Sec. 3: ab quantised as in colorization (grid 10)"),
            "method.l_bins": P(50, "harness choice: L quantised into 50 equal bins"),
            "method.output_stride": P(4, "harness choice (colorization predicts at 1/4 resolution)"),
            "train.optimizer": P("adamw", "harness choice"),
            "train.lr": P(1e-3, "harness choice"),
            "train.weight_decay": P(1e-4, "harness choice"),
            "train.epochs": P(30, "harness choice"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "train.batch_size": 64,
            "train.lr": 2e-3,
            "train.epochs": 8,
            "train.warmup_epochs": 1,
        },
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        size = int(cfg["data.image_size"])
        half = float(cfg["backbone.width"]) / 2  # two disjoint halves of the configured width
        self.backbone = SplitBrainEncoder(self.build_backbone(size, width=half), self.build_backbone(size, width=half))
        self.register_buffer("centres", gamut_bins(int(cfg["method.ab_grid"])).clone(), persistent=False)
        channels, side = feature_map_size(self.backbone.l_net, size)
        out = max(size // int(cfg["method.output_stride"]), side)
        self.ab_head = ConvDecoder(channels, side, out, out_channels=self.centres.shape[0])
        self.l_head = ConvDecoder(channels, side, out, out_channels=int(cfg["method.l_bins"]))

    def train_transform(self):
        return crop_flip_transform(int(self.cfg["data.image_size"]), 0.5, normalize=False)  # Lab targets need raw RGB

    def training_step(self, batch):
        rgb, _ = batch
        lab = rgb_to_lab(rgb)
        l_in, ab_in = lab_inputs(lab)
        ab_logits = self.ab_head(self.backbone.l_net.forward_maps(l_in))
        l_logits = self.l_head(self.backbone.ab_net.forward_maps(ab_in))
        small = F.adaptive_avg_pool2d(lab, ab_logits.shape[-1])
        pts = small[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2)
        ab_bins = torch.cdist(pts, self.centres).argmin(dim=1).view(small.shape[0], *small.shape[-2:])
        q = int(self.cfg["method.l_bins"])
        l_bins = (small[:, 0] / 100 * q).long().clamp(0, q - 1)
        return {"loss": split_brain_loss(ab_logits, ab_bins, l_logits, l_bins)}

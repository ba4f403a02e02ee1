"""RotNet: predict which of four rotations was applied (Gidaris et al., ICLR 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import Config, P
from harness.data.transforms import crop_flip_transform
from methods.base import Method, glyphs_budget

GIDARIS = "Gidaris et al. 2018, Sec. 3 / CIFAR-10 setup"
REVISITING = "Kolesnikov et al. 2019 code, config/rotation/imagenet.sh"


def revisiting_recipe(backbone: str, filters_factor: int, probe_layer: str = "pre_logits") -> dict:
    """Rotation as trained in the Revisiting SSL study (Kolesnikov, Zhai & Beyer, CVPR 2019).

    ``filters_factor`` is the study's width k (the root conv has 16k filters, so 4 is the
    standard ResNet-50); here it becomes the width multiplier k/4. Their Table 1 reports
    ResNet50 v1 at 4x/8x/12x/16x: 41.7 / 43.4 / 43.3 / 43.2 % linear top-1 on ImageNet.
    """
    return {
        "backbone.name": P(backbone, f"{REVISITING} (Table 1 architecture)"),
        "backbone.width": P(filters_factor / 4, f"{REVISITING}: filters_factor {filters_factor} (x{filters_factor / 4:g} of standard)"),
        "backbone.probe_layer": P(probe_layer, "Kolesnikov et al. 2019, Sec. 4.2 (layer-wise evaluation)"),
        "train.optimizer": P("sgd", REVISITING),
        "train.lr": P(0.1, f"{REVISITING}: lr 0.1 per 256 images (batch 64 x 4 rotations = 256)"),
        "train.batch_size": P(64, REVISITING),
        "train.epochs": P(35, REVISITING),
        "train.warmup_epochs": P(5, REVISITING),
        "train.schedule": P("step", REVISITING),
        "train.decay_epochs": P([15, 25], REVISITING),
        "train.weight_decay": P(1e-4, "Kolesnikov et al. 2019 code default"),
        "method.crop_scale_min": P(0.08, f"{REVISITING}: inception_preprocess crop"),
        "method.flip": P(True, f"{REVISITING}: inception_preprocess flip"),
    }


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image: x [B, C, H, W] -> ([4B, C, H, W], labels [4B]).

    Label r means a counter-clockwise rotation by r * 90 degrees. Images are grouped by
    rotation (all 0-degree copies first), as the paper trains on all four at once.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    views = torch.cat([torch.rot90(x, r, dims=(-2, -1)) for r in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return views, labels


class Rotation(Method):
    name = "rotation"
    family = "pretext task"
    description = "RotNet: 4-way classification of the rotation (0/90/180/270) applied to each image"
    source = "Gidaris, Singh & Komodakis, ICLR 2018"
    recipes = {
        "default": {
            "backbone.name": P("resnet50", "Kolesnikov et al. 2019 (Revisiting SSL) ResNet-50 v1"),
            "train.optimizer": P("sgd", GIDARIS),
            "train.lr": P(0.1, GIDARIS),
            "train.momentum": P(0.9, GIDARIS),
            "train.weight_decay": P(5e-4, GIDARIS),
            "train.batch_size": P(128, f"{GIDARIS} (each image in all 4 rotations)"),
            "train.epochs": P(100, GIDARIS),
            "method.crop_scale_min": P(0.08, "harness choice: standard RandomResizedCrop"),
            "method.flip": P(True, GIDARIS),
        },
        # The architecture study's ResNet50 v1 widths, probed at pre-logits (Table 1), and
        # its layer-wise read-outs (Sec. 4.2): `--recipe revisiting_r50_w4 backbone.probe_layer=block3`.
        **{f"revisiting_r50_w{k}": revisiting_recipe("resnet50", k) for k in (4, 8, 12, 16)},
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "train.epochs": 6,
            "train.batch_size": 64,
            "train.lr": 0.05,
            "train.warmup_epochs": 1,
            "method.crop_scale_min": 0.5,
            # Digits are not mirror-symmetric; a flip would add a label-changing augmentation.
            "method.flip": False,
        },
        "glyphs": glyphs_budget(4),
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.backbone = self.build_backbone(cfg["data.image_size"])
        self.head = nn.Linear(self.backbone.num_features, 4)

    def train_transform(self):
        return crop_flip_transform(self.cfg["data.image_size"], self.cfg["method.crop_scale_min"], self.cfg["method.flip"])

    def training_step(self, batch):
        images, _ = batch
        views, labels = rotate_batch(images)
        logits = self.head(self.backbone(views))
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        return {"loss": loss, "rotation_acc": acc}

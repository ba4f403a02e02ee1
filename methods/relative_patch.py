"""Relative patch location: where is the second patch relative to the first?
(Doersch, Gupta & Efros, ICCV 2015)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2 as T

from harness.config import Config, P
from methods.base import Method
from methods.components.patches import Grid, grid_tile_features, cut_tiles, drop_channels, normalize_tiles

DOERSCH = "Doersch et al. 2015"

# Label k <-> the k-th neighbour of the centre cell of a 3x3 grid, row-major, centre skipped.
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)
OFFSETS = tuple((cell // 3 - 1, cell % 3 - 1) for cell in NEIGHBOURS)  # (row, col) in cells


def relative_patch_loss(logits: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the 8 neighbour positions. logits: [B, 8]; position: [B] long."""
    return F.cross_entropy(logits, position)


class RelativePatchTransform:
    """PIL image -> (pair [2, 3, t, t]: centre tile then neighbour, neighbour label 0..7)."""

    def __init__(self, grid: Grid, color_drop: bool):
        self.grid, self.color_drop = grid, color_drop
        self.crop = T.Compose([
            T.RandomResizedCrop(grid.size, scale=(0.6, 1.0), antialias=True),
            T.ToImage(), T.ToDtype(torch.float32, scale=True),
        ])

    def __call__(self, img):
        tiles = cut_tiles(self.crop(img), self.grid, jitter=True)
        label = int(torch.randint(0, 8, ()))
        pair = tiles[[4, NEIGHBOURS[label]]]
        if self.color_drop:
            pair = drop_channels(pair)
        return normalize_tiles(pair), label


class RelativePatch(Method):
    name = "relative_patch"
    family = "pretext task"
    description = "Relative patch location: 8-way classification of a neighbour patch's position"
    source = "Doersch, Gupta & Efros, ICCV 2015"
    probes_blocks = False  # its representation is not one backbone pass over the image
    recipes = {
        "default": {
            "backbone.name": P("resnet50", "Kolesnikov et al. 2019 (Revisiting SSL) ResNet-50 v1"),
            "data.image_size": P(432, f"{DOERSCH}, Sec. 4: a 3x3 grid of 96px patches with 48px gaps"),
            "method.cell": P(144, f"{DOERSCH}, Sec. 4: a 96px patch plus a 48px gap"),
            "method.tile": P(96, f"{DOERSCH}, Sec. 4: 96x96 patches"),
            "method.jitter": P(7, f"{DOERSCH}, Sec. 4: patches jittered by up to 7px"),
            "method.color_drop": P(True, f"{DOERSCH}, Sec. 4: color dropping against chromatic aberration"),
            "method.hidden_dim": P(4096, f"{DOERSCH}, Fig. 3: fc7 4096 units"),
            "train.optimizer": P("sgd", DOERSCH),
            "train.lr": P(0.01, "harness choice"),
            "train.batch_size": P(256, "harness choice"),
            "train.weight_decay": P(5e-4, "harness choice"),
            "train.epochs": P(70, "harness choice"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "data.image_size": 32,
            "method.cell": 10,
            "method.tile": 6,
            "method.jitter": 1,
            "method.hidden_dim": 256,
            "train.batch_size": 64,
            "train.lr": 0.05,
            "train.epochs": 8,
            "train.warmup_epochs": 1,
        },
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.grid = Grid(3, int(cfg["method.cell"]), int(cfg["method.tile"]), int(cfg["method.jitter"]))
        self.grid.check_fits(int(cfg["data.image_size"]))
        self.backbone = self.build_backbone(self.grid.tile)
        d, h = self.backbone.num_features, int(cfg["method.hidden_dim"])
        self.head = nn.Sequential(nn.Linear(2 * d, h), nn.ReLU(inplace=True), nn.Linear(h, 8))

    def train_transform(self):
        return RelativePatchTransform(self.grid, bool(self.cfg["method.color_drop"]))

    def training_step(self, batch):
        (pair, label), _ = batch
        b = pair.shape[0]
        z = self.backbone(pair.flatten(0, 1)).view(b, -1)  # [centre ; neighbour] embeddings
        logits = self.head(z)
        return {"loss": relative_patch_loss(logits, label), "position_acc": (logits.argmax(1) == label).float().mean()}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean embedding of the centred grid of tiles (the network never saw whole images)."""
        return grid_tile_features(self.backbone, x, self.grid)

"""Jigsaw puzzles: which permutation shuffled the 3x3 tiles? (Noroozi & Favaro, ECCV 2016)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2 as T

from harness.config import Config, P
from methods.base import Method
from methods.components.patches import Grid, grid_tile_features, channel_jitter, cut_tiles, normalize_tiles, random_grayscale
from methods.components.permutations import max_hamming_permutations

NOROOZI = "Noroozi & Favaro 2016"


def jigsaw_loss(logits: torch.Tensor, permutation_index: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the permutation set. logits: [B, P]; permutation_index: [B] long."""
    return F.cross_entropy(logits, permutation_index)


def shuffle_tiles(tiles: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Position i of the puzzle receives tile ``permutation[i]``. tiles: [9, ...]."""
    return tiles[permutation]


def unshuffle_tiles(shuffled: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Inverse of ``shuffle_tiles``: puts every tile back in its original cell."""
    out = torch.empty_like(shuffled)
    out[permutation] = shuffled
    return out


class JigsawTransform:
    """PIL image -> (shuffled, normalised tiles [9, 3, t, t], permutation index)."""

    def __init__(self, grid: Grid, permutations: torch.Tensor, grey_p: float, channel_shift: int):
        self.grid, self.permutations = grid, permutations
        self.grey_p, self.channel_shift = grey_p, channel_shift
        self.crop = T.Compose([
            T.RandomResizedCrop(grid.size, scale=(0.6, 1.0), antialias=True),
            T.ToImage(), T.ToDtype(torch.float32, scale=True),
        ])

    def __call__(self, img):
        tiles = cut_tiles(self.crop(img), self.grid, jitter=True)
        tiles = random_grayscale(tiles, self.grey_p)
        tiles = normalize_tiles(channel_jitter(tiles, self.channel_shift))
        index = int(torch.randint(0, len(self.permutations), ()))
        return shuffle_tiles(tiles, self.permutations[index]), index


class Jigsaw(Method):
    name = "jigsaw"
    family = "pretext task"
    description = "Jigsaw puzzles: classify which of a max-Hamming permutation set shuffled 3x3 tiles"
    source = "Noroozi & Favaro, ECCV 2016"
    probes_blocks = False  # its representation is not one backbone pass over the image
    recipes = {
        "default": {
            "backbone.name": P("resnet50", "Kolesnikov et al. 2019 (Revisiting SSL) ResNet-50 v1"),
            "data.image_size": P(225, f"{NOROOZI}, Sec. 3.2: 225x225 crop"),
            "method.cell": P(75, f"{NOROOZI}, Sec. 3.2: 3x3 grid of 75x75 cells"),
            "method.tile": P(64, f"{NOROOZI}, Sec. 3.2: 64x64 tile drawn inside each cell"),
            "method.permutations": P(1000, f"{NOROOZI}, Table 3: 1000 permutations, max Hamming"),
            "method.grey_p": P(0.3, f"{NOROOZI}, Sec. 3.2: 30% of images in grey"),
            "method.channel_shift": P(2, f"{NOROOZI}, Sec. 3.2: colour channels jittered by +-2 px"),
            "method.hidden_dim": P(4096, f"{NOROOZI}, Fig. 3: fc7 4096 units"),
            "train.optimizer": P("sgd", f"{NOROOZI}, Sec. 3.3"),
            "train.lr": P(0.01, f"{NOROOZI}, Sec. 3.3"),
            "train.batch_size": P(256, f"{NOROOZI}, Sec. 3.3"),
            "train.weight_decay": P(5e-4, "harness choice"),
            "train.epochs": P(70, "harness choice (the paper trains 350k iterations)"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "data.image_size": 32,
            "method.cell": 10,
            "method.tile": 8,
            "method.permutations": 100,
            "method.channel_shift": 1,
            "method.hidden_dim": 256,
            "train.batch_size": 64,
            "train.lr": 0.05,
            "train.epochs": 8,
            "train.warmup_epochs": 1,
        },
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.grid = Grid(3, int(cfg["method.cell"]), int(cfg["method.tile"]))
        self.grid.check_fits(int(cfg["data.image_size"]))
        self.register_buffer("permutations", torch.from_numpy(max_hamming_permutations(int(cfg["method.permutations"]))),
                             persistent=False)
        self.backbone = self.build_backbone(self.grid.tile)
        d, h = self.backbone.num_features, int(cfg["method.hidden_dim"])
        self.head = nn.Sequential(nn.Linear(9 * d, h), nn.ReLU(inplace=True), nn.Linear(h, len(self.permutations)))

    def train_transform(self):
        c = self.cfg
        return JigsawTransform(self.grid, self.permutations.cpu(), float(c["method.grey_p"]), int(c["method.channel_shift"]))

    def training_step(self, batch):
        (tiles, index), _ = batch
        b = tiles.shape[0]
        z = self.backbone(tiles.flatten(0, 1)).view(b, -1)  # shared tile encoder, concatenated in order
        logits = self.head(z)
        loss = jigsaw_loss(logits, index)
        return {"loss": loss, "jigsaw_acc": (logits.argmax(1) == index).float().mean()}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean embedding of the centred grid of tiles (the network never saw whole images)."""
        return grid_tile_features(self.backbone, x, self.grid)

"""Exemplar networks: every image is its own class, seen through heavy augmentation
(Dosovitskiy et al., NIPS 2014), trained with a triplet loss over image identities as in
Kolesnikov, Zhai & Beyer (Revisiting SSL, CVPR 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2 as T

from harness.config import Config, P
from methods.base import Method, glyphs_budget
from methods.components.patches import normalize_tiles

DOSOVITSKIY = "Dosovitskiy et al. 2014"
REVISITING = "Kolesnikov et al. 2019"


def exemplar_triplet_loss(embeddings: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-all triplet loss over image identities.

    embeddings: [B, K, D], K augmented copies of each of B images (L2-normalised inside).
    Every (anchor, positive) pair of copies of one image meets every copy of every other
    image as a negative; the loss is the mean of max(0, d(a, p) - d(a, n) + margin) over
    the triplets that violate the margin (zero when none does), with d the Euclidean
    distance between normalised embeddings.
    """
    b, k, _ = embeddings.shape
    z = F.normalize(embeddings.flatten(0, 1), dim=1)
    dist = torch.cdist(z, z)
    ident = torch.arange(b, device=z.device).repeat_interleave(k)
    same = ident[:, None] == ident[None, :]
    pos = same & ~torch.eye(b * k, dtype=torch.bool, device=z.device)
    neg = ~same
    viol = (dist[:, :, None] - dist[:, None, :] + margin).clamp_min(0)  # [anchor, positive, negative]
    valid = pos[:, :, None] & neg[:, None, :]
    viol = viol * valid
    active = (viol > 0).sum()
    return viol.sum() / active.clamp_min(1)


class ExemplarViews:
    """K heavy augmentations of one image: crop/scale, flip, rotation, colour and contrast,
    grey with probability ``grayscale_p``, then per-view standardisation.

    The grey copies and the standardisation follow the Revisiting code
    (config/exemplar/imagenet.sh: ``to_gray`` with probability 0.66, ``standardization``):
    without them the identity of an image is told apart by its colour histogram alone.
    """

    def __init__(self, size: int, copies: int, grayscale_p: float):
        self.copies = copies
        self.aug = T.Compose([
            T.RandomResizedCrop(size, scale=(0.3, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomRotation(20),
            T.ColorJitter(0.4, 0.4, 0.4, 0.1),
            T.RandomGrayscale(grayscale_p),
            T.ToImage(), T.ToDtype(torch.float32, scale=True),
        ])

    def __call__(self, img):
        return normalize_tiles(torch.stack([self.aug(img) for _ in range(self.copies)]))


class Exemplar(Method):
    name = "exemplar"
    family = "pretext task"
    description = "Exemplar: heavy augmentations of each image, triplet loss over image identities"
    source = "Dosovitskiy et al., NIPS 2014; triplet variant of Kolesnikov et al., CVPR 2019"
    recipes = {
        "default": {
            "backbone.name": P("resnet50", f"{REVISITING}, Table 1: ResNet-50 v1"),
            "method.copies": P(8, f"{REVISITING}: 8 exemplars per image"),
            "method.margin": P(0.5, f"{REVISITING} code, config/exemplar/imagenet.sh"),
            "method.embedding_dim": P(1000, f"{REVISITING} code, config/exemplar/imagenet.sh"),
            "method.grayscale_p": P(0.66, f"{REVISITING} code, config/exemplar/imagenet.sh"),
            "train.optimizer": P("sgd", REVISITING),
            "train.lr": P(0.1, f"{REVISITING} code (lr 0.1 per 256 images)"),
            "train.weight_decay": P(1e-4, "harness choice"),
            "train.batch_size": P(64, f"{REVISITING} code (images; x copies views per step)"),
            "train.epochs": P(35, f"{REVISITING} code, config/exemplar/imagenet.sh"),
            "train.warmup_epochs": P(5, f"{REVISITING} code, config/exemplar/imagenet.sh"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "method.copies": 4,
            "method.embedding_dim": 128,
            "train.batch_size": 32,
            "train.lr": 0.05,
            "train.epochs": 5,
            "train.warmup_epochs": 1,
        },
        "glyphs": glyphs_budget(3),  # 5 epochs took 578 s with two runs at once
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        self.head = nn.Linear(self.backbone.num_features, int(cfg["method.embedding_dim"]))

    def train_transform(self):
        return ExemplarViews(int(self.cfg["data.image_size"]), int(self.cfg["method.copies"]), float(self.cfg["method.grayscale_p"]))

    def training_step(self, batch):
        views, _ = batch  # [B, K, 3, H, W]
        b, k = views.shape[:2]
        emb = self.head(self.backbone(views.flatten(0, 1))).view(b, k, -1)
        return {"loss": exemplar_triplet_loss(emb, float(self.cfg["method.margin"]))}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # The network only ever saw standardised inputs; evaluation images get the same.
        return self.represent(normalize_tiles(x))

"""NNCLR: contrastive learning with nearest neighbours as positives (Dwibedi, Aytar, Tompson,
Sermanet & Zisserman, "With a Little Help from My Friends", ICCV 2021).

    z1, z2 = normalize(g(f(x1))), normalize(g(f(x2)))      # projections of two views
    p1, p2 = h(z1), h(z2)                                  # predictions
    nn1 = NN(z1, Q); nn2 = NN(z2, Q)                       # nearest neighbour in the support set Q
    loss = InfoNCE(nn1, p2) / 2 + InfoNCE(nn2, p1) / 2     # positives: the neighbour, negatives: the batch
    Q.enqueue(z1)                                          # FIFO support set

A plugin package: it imports only the public API (``ssl_harness``) and registers through the
``harness.methods`` entry point in its pyproject.toml.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_harness import Method, P, crop_flip_transform

PAPER = "Dwibedi et al. 2021 (NNCLR), ICCV"
SOLO = "solo-learn bash_files/run_nnclr.sh (ImageNet-100, ResNet-18)"


def nearest_neighbours(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """For each row of ``z`` (L2-normalised), the most cosine-similar row of ``support``."""
    return support[(z @ support.T).argmax(dim=1)]


def nnclr_loss(neighbours: torch.Tensor, predictions: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the i-th neighbour as the i-th prediction's positive and the other rows of
    the batch as negatives (paper Eq. 2); both inputs are normalised here."""
    logits = F.normalize(neighbours, dim=1) @ F.normalize(predictions, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def mlp(dims: list[int], last_bn: bool) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(dims) - 2 or last_bn:
            layers.append(nn.BatchNorm1d(b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class TwoViews:
    def __init__(self, size: int, scale_min: float):
        self.view = crop_flip_transform(size, scale_min=scale_min)

    def __call__(self, img):
        return self.view(img), self.view(img)


class NNCLR(Method):
    name = "nnclr"
    family = "contrastive"
    description = "contrastive learning whose positive is the nearest neighbour of a view in a support set"
    source = PAPER
    recipes = {
        "default": {
            "backbone.name": P("resnet18", SOLO),
            "train.optimizer": P("lars", SOLO),
            "train.lr": P(0.4, f"{SOLO}: --lr 0.4"),
            "train.weight_decay": P(1e-5, SOLO),
            "train.batch_size": P(256, f"{SOLO}: 128 x 2 GPUs"),
            "train.epochs": P(500, SOLO),
            "train.schedule": P("cosine", f"{SOLO}: warmup_cosine"),
            "method.temperature": P(0.1, f"{PAPER}; {SOLO} runs 0.1 and 0.2"),
            "method.queue_size": P(65536, f"{SOLO}: --queue_size 65536 (the paper: 98,304)"),
            "method.proj_hidden": P(2048, SOLO),
            "method.proj_dim": P(256, f"{SOLO}: --encoding_dim 256"),
            "method.pred_hidden": P(4096, SOLO),
            "method.crop_scale_min": P(0.08, f"{PAPER}: SimCLR/BYOL augmentations"),
        },
    }
    # The embedded suites: a small ResNet and a support set of a few batches, a CPU budget.
    suite_profiles = {
        "digits": {"backbone.name": "resnet_small", "backbone.width": 0.5, "train.epochs": 6, "train.batch_size": 64,
                   "train.optimizer": "sgd", "train.lr": 0.05, "method.queue_size": 1024, "method.proj_hidden": 256,
                   "method.proj_dim": 64, "method.pred_hidden": 256, "method.crop_scale_min": 0.35},
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        hidden, dim = int(cfg["method.proj_hidden"]), int(cfg["method.proj_dim"])
        self.projector = mlp([self.backbone.num_features, hidden, hidden, dim], last_bn=True)
        self.predictor = mlp([dim, int(cfg["method.pred_hidden"]), dim], last_bn=False)
        # The support set starts as random unit vectors (as in solo-learn) and fills with projections.
        self.register_buffer("support", F.normalize(torch.randn(int(cfg["method.queue_size"]), dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def train_transform(self):
        return TwoViews(int(self.cfg["data.image_size"]), float(self.cfg["method.crop_scale_min"]))

    def training_step(self, batch):
        (x1, x2), _labels = batch
        z1 = F.normalize(self.projector(self.backbone(x1)), dim=1)
        z2 = F.normalize(self.projector(self.backbone(x2)), dim=1)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t = float(self.cfg["method.temperature"])
        nn1, nn2 = nearest_neighbours(z1, self.support), nearest_neighbours(z2, self.support)
        loss = 0.5 * nnclr_loss(nn1, p2, t) + 0.5 * nnclr_loss(nn2, p1, t)
        self._enqueue(z1.detach())
        return {"loss": loss}

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        n, size = len(z), len(self.support)
        idx = (self.pointer + torch.arange(n, device=z.device)) % size
        self.support[idx] = z
        self.pointer.copy_((self.pointer + n) % size)

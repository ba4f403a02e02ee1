"""SwAV: swapping assignments between multi-crop views (Caron et al., NeurIPS 2020).

Every crop is embedded (backbone -> MLP -> L2 normalisation) and scored against K
L2-normalised prototypes. The codes of the two global crops are computed online by
Sinkhorn-Knopp (equal use of the prototypes over the batch, optionally padded with a queue
of earlier embeddings); every other crop predicts them from its own scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import Config, P
from methods.base import Method, glyphs_budget
from methods.components.heads import mlp
from methods.components.views import DIGITS_MULTI_CROP, augment_from_cfg, multi_crop, split_by_size
from methods.losses import swav_loss_distributed

CODE = "facebookresearch/swav main_swav.py"
S800 = "facebookresearch/swav scripts/swav_800ep_pretrain.sh"
S256 = "facebookresearch/swav scripts/swav_400ep_bs256_pretrain.sh"
DATA = "facebookresearch/swav src/multicropdataset.py"
MODEL = "facebookresearch/swav src/resnet50.py"
README = "facebookresearch/swav README (model zoo)"

# Codes come from the global crops only (the official ``crops_for_assign`` [0, 1]).
N_GLOBAL = 2

DEFAULT = {
    "backbone.name": P("resnet50", f"{S800}: --arch resnet50"),
    "data.image_size": P(224, f"{S800}: --size_crops 224 96"),
    "method.local_size": P(96, f"{S800}: --size_crops 224 96"),
    "method.n_local": P(6, f"{S800}: --nmb_crops 2 6"),
    "method.aug.crop_scale": P([0.14, 1.0], f"{S800}: --min_scale_crops 0.14 --max_scale_crops 1."),
    "method.local.crop_scale": P([0.05, 0.14], f"{S800}: --min_scale_crops 0.05 --max_scale_crops 0.14"),
    "method.aug.flip": P(True, f"{DATA}: RandomHorizontalFlip(p=0.5)"),
    "method.aug.jitter": P(0.8, f"{DATA}: get_color_distortion(s=1): ColorJitter(0.8, 0.8, 0.8, 0.2)"),
    "method.aug.hue": P(0.2, f"{DATA}: ColorJitter hue 0.2"),
    "method.aug.jitter_p": P(0.8, f"{DATA}: RandomApply([color_jitter], p=0.8)"),
    "method.aug.grayscale_p": P(0.2, f"{DATA}: RandomGrayscale(p=0.2)"),
    "method.aug.blur_p": P(0.5, f"{DATA}: RandomGaussianBlur, p 0.5, sigma 0.1-2.0"),
    "method.hidden_dim": P(2048, f"{MODEL}: projection head Linear(2048, 2048)-BN-ReLU-Linear"),
    "method.feat_dim": P(128, f"{S800}: --feat_dim 128"),
    "method.n_prototypes": P(3000, f"{S800}: --nmb_prototypes 3000"),
    "method.temperature": P(0.1, f"{S800}: --temperature 0.1"),
    "method.epsilon": P(0.05, f"{S800}: --epsilon 0.05"),
    "method.sinkhorn_iters": P(3, f"{S800}: --sinkhorn_iterations 3"),
    "method.queue_length": P(0, f"{S800}: --queue_length 0 (large batches need no queue)"),
    "method.epoch_queue_starts": P(15, f"{CODE}: --epoch_queue_starts default 15"),
    "method.freeze_prototypes_epochs": P(1, f"{S800}: --freeze_prototypes_niters 313 = one epoch of 1,281,167 images at batch 4096"),
    "train.optimizer": P("lars", f"{CODE}: SGD(momentum 0.9) in LARC(trust_coefficient=0.001, clip=False)"),
    "train.momentum": P(0.9, CODE),
    "train.lars_eta": P(0.001, f"{CODE}: LARC trust_coefficient 0.001"),
    "train.lr": P(4.8, f"{S800}: --base_lr 4.8"),
    "train.min_lr_ratio": P(0.001, f"{S800}: --final_lr 0.0048 = base_lr / 1000"),
    "train.warmup_epochs": P(10, f"{S800}: --warmup_epochs 10 (from --start_warmup 0.3 there, from 0 here)"),
    "train.weight_decay": P(1e-6, f"{S800}: --wd 0.000001"),
    "train.batch_size": P(4096, f"{README}: batch 4096 (64 GPUs x --batch_size 64)"),
    "train.epochs": P(800, f"{README}: 800 epochs, 2x224 + 6x96, 75.3% linear top-1"),
}

# Small batches: a queue of earlier embeddings enlarges the set Sinkhorn balances over.
QUEUE = {
    **DEFAULT,
    "method.queue_length": P(3840, f"{S256}: --queue_length 3840"),
    "method.epoch_queue_starts": P(15, f"{S256}: --epoch_queue_starts 15"),
    "method.freeze_prototypes_epochs": P(1, f"{S256}: --freeze_prototypes_niters 5005 = one epoch at batch 256"),
    "train.lr": P(0.6, f"{S256}: --base_lr 0.6"),
    "train.min_lr_ratio": P(0.001, f"{S256}: --final_lr 0.0006"),
    "train.warmup_epochs": P(0, f"{S256}: --warmup_epochs 0"),
    "train.batch_size": P(256, f"{S256}: 4 GPUs x --batch_size 64"),
    "train.epochs": P(400, f"{README}: 400 epochs at batch 256, 74.3% linear top-1"),
}


class SwAV(Method):
    name = "swav"
    family = "clustering"
    description = "SwAV: swapped prediction of Sinkhorn-Knopp prototype codes across multi-crop views"
    source = "Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments, NeurIPS 2020"
    recipes = {"default": DEFAULT, "queue": QUEUE}
    suite_profiles = {
        "digits": {
            # DIGITS_MULTI_CROP; few prototypes for ten classes, and no queue (a short run
            # never reaches epoch 15).
            **DIGITS_MULTI_CROP,
            "method.aug.jitter": 0.4,
            "method.aug.hue": 0.1,
            "method.hidden_dim": 512,
            "method.feat_dim": 64,
            "method.n_prototypes": 30,
            "method.queue_length": 0,
            "train.batch_size": 64,
            "train.epochs": 6,
            "train.lr": 0.6,
            "train.min_lr_ratio": 0.01,
            "train.warmup_epochs": 1,
        },
        "glyphs": glyphs_budget(3),
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        d = int(cfg["method.feat_dim"])
        self.projector = mlp([self.backbone.num_features, int(cfg["method.hidden_dim"]), d])
        self.prototypes = nn.Linear(d, int(cfg["method.n_prototypes"]), bias=False)
        # The official queue is trimmed to a multiple of the (global) batch size.
        length = int(cfg["method.queue_length"])
        length -= length % int(cfg["train.batch_size"])
        self.queue_starts = int(cfg["method.epoch_queue_starts"])
        # Per global crop, the embeddings of earlier batches, newest first; all-zero rows
        # are not filled yet. Buffers, so a resumed run has the queue it stopped with.
        self.register_buffer("queue", torch.zeros(N_GLOBAL, length, d))
        self.register_buffer("queue_filling", torch.tensor(length > 0 and self.queue_starts <= 0))

    def train_transform(self):
        c = self.cfg
        global_view = augment_from_cfg(c, "method.global", int(c["data.image_size"]))
        local_view = augment_from_cfg(c, "method.local", int(c["method.local_size"]))
        return multi_crop([global_view] * N_GLOBAL, local_view, int(c["method.n_local"]))

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Prototypes on the unit sphere before every step (official main_swav.py), so a
        score is a cosine similarity."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Crops -> L2-normalised embeddings [n_crops * B, feat_dim], crop by crop."""
        feats = torch.cat([self.backbone(x) for x in split_by_size(views)])
        return F.normalize(self.projector(feats), dim=1)

    def training_step(self, batch):
        views = batch[0]
        self.normalize_prototypes()
        b = views[0].shape[0]
        z = self.embed(views)
        scores = self.prototypes(z).split(b)
        use_queue = self.queue.shape[1] > 0 and bool(self.queue_filling) and bool(self.queue[:, -1].any())
        queue_scores = None
        if use_queue:
            with torch.no_grad():  # scored against the current prototypes, as in the official loop
                queue_scores = [self.prototypes(self.queue[i].to(z.dtype)) for i in range(N_GLOBAL)]
        c = self.cfg
        loss = swav_loss_distributed(list(scores), float(c["method.epsilon"]), int(c["method.sinkhorn_iters"]),
                                     float(c["method.temperature"]), N_GLOBAL, queue_scores)
        if self.queue.shape[1] > 0 and bool(self.queue_filling):
            self._enqueue(z.detach()[: N_GLOBAL * b].view(N_GLOBAL, b, -1))
        return {"loss": loss, "queue_used": torch.tensor(float(use_queue))}

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        b = z.shape[1]
        self.queue[:, b:] = self.queue[:, :-b].clone()
        self.queue[:, :b] = z.to(self.queue.dtype)

    def before_optimizer_step(self, step, total_steps, steps_per_epoch):
        self._steps_per_epoch = steps_per_epoch
        # Prototypes stay fixed at first (official --freeze_prototypes_niters): with no
        # gradient the optimizer leaves them, weight decay included, untouched.
        if step < steps_per_epoch * float(self.cfg["method.freeze_prototypes_epochs"]):
            self.prototypes.weight.grad = None

    def on_step_end(self, step, total_steps):
        if self.queue.shape[1] > 0 and not bool(self.queue_filling):
            if (step + 1) // self._steps_per_epoch >= self.queue_starts:
                self.queue_filling.fill_(True)

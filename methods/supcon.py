"""Supervised contrastive learning (Khosla et al., NeurIPS 2020): SimCLR's two-view
contrastive setup, but every other view with the anchor's class label is a positive.

This method USES THE LABELS of the training set: it is a supervised upper bound for the
contrastive methods, not a self-supervised method. ``method.use_labels=false`` drops the
labels, and its loss is then exactly SimCLR's NT-Xent (Khosla et al., Eq. 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.config import Config, P
from methods.base import Method, glyphs_budget
from methods.components.distributed import concat_all_gather, gather_with_grad
from methods.components.heads import mlp
from methods.losses import supcon_loss
from methods.simclr import DIGITS_TWO_VIEW, global_batchnorm, simclr_augment_recipe, two_views

KHOSLA = "Khosla et al. 2020 (SupCon)"
CODE = "HobbitLong/SupContrast"


class SupCon(Method):
    name = "supcon"
    family = "contrastive"
    description = ("SupCon: SUPERVISED contrastive loss that uses the class labels (an upper bound, "
                   "not self-supervised); method.use_labels=false gives SimCLR's loss")
    source = "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020"
    recipes = {
        "default": {
            "backbone.name": P("resnet50", f"{KHOSLA}, Sec. 4: ResNet-50 (78.7 % with AutoAugment)"),
            # The paper's best ImageNet number uses AutoAugment; SimCLR's augmentation (the
            # paper's "SimAugment", Sec. 4 / App.) is the one the harness implements.
            **simclr_augment_recipe(),
            "method.use_labels": P(True, f"{KHOSLA}, Eq. 2: positives are all views of the anchor's class"),
            "method.temperature": P(0.1, f"{KHOSLA}, Sec. 4 (temperature 0.1); {CODE} README --temp 0.1"),
            "method.proj_hidden": P(2048, f"{KHOSLA}, Sec. 3.1: MLP with one hidden layer of size 2048"),
            "method.proj_dim": P(128, f"{KHOSLA}, Sec. 3.1: output of size 128, L2-normalised"),
            "method.proj_norm": P(False, f"{CODE} networks/resnet_big.py SupConResNet head: Linear-ReLU-Linear, no BN"),
            "method.global_bn": P(True, f"{KHOSLA}: SimCLR's large-batch setup with BN across devices"),
            "train.optimizer": P("lars", f"{KHOSLA}, Sec. 4: LARS for the large-batch ImageNet runs"),
            "train.lr": P(4.8, "harness choice: SimCLR's LARS rule 0.3 x batch/256 (Chen et al. 2020, Sec. 2.3)"),
            "train.weight_decay": P(1e-6, "harness choice: SimCLR's 1e-6 (Chen et al. 2020, Sec. 2.3)"),
            "train.batch_size": P(4096, f"{KHOSLA}, Sec. 4: batch sizes up to 6144; 4096 as SimCLR"),
            "train.epochs": P(350, f"{KHOSLA}, Sec. 4 (training details): 350 pretraining epochs below ResNet-200 (700 for it)"),
            "train.warmup_epochs": P(10, "harness choice: SimCLR's 10 warmup epochs"),
            "train.schedule": P("cosine", f"{KHOSLA}; {CODE} README --cosine"),
        },
    }
    suite_profiles = {
        "digits": {
            **DIGITS_TWO_VIEW,
            # The official head has no BN; on the pooled (non-negative) features of a fresh
            # small network its outputs start nearly parallel, and a short run does not leave
            # that point (the 16-step check stays at log(2N - 1)). SimCLR's BN head does:
            # 12-epoch digits sweep, kNN top-1 88 -> 96 % with labels, 41 -> 46 % without.
            "method.proj_norm": True,
        },
        "glyphs": glyphs_budget(6),
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        dims = [self.backbone.num_features, int(cfg["method.proj_hidden"]), int(cfg["method.proj_dim"])]
        self.projector = mlp(dims, norm=bool(cfg["method.proj_norm"]))
        global_batchnorm(self, bool(cfg["method.global_bn"]))

    def train_transform(self):
        return two_views(self.cfg)

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """[B, 2, D] L2-normalised projections, one pass over both views (official code)."""
        z = F.normalize(self.projector(self.backbone(torch.cat(views))), dim=1)
        return torch.stack(z.chunk(2), dim=1)

    def training_step(self, batch):
        views, labels = batch[0], batch[1]
        features = self.embed(views)
        use_labels = bool(self.cfg["method.use_labels"])
        # Every process scores its images against the global batch (identity in one process).
        features = gather_with_grad(features)
        labels = concat_all_gather(labels) if use_labels else None
        if labels is not None and bool((labels < 0).any()):
            # Unlabeled images (label -1, STL-10) are each a class of their own: positives are
            # only their other views, SimCLR's loss for them.
            own = -1 - torch.arange(len(labels), device=labels.device)
            labels = torch.where(labels < 0, own, labels)
        return {"loss": supcon_loss(features, labels, float(self.cfg["method.temperature"]))}

"""BYOL: an online network predicts an EMA target's projection of another view, with no
negatives (Grill et al., NeurIPS 2020)."""
from __future__ import annotations

import torch
from torch import nn

from harness.config import Config, P
from methods.base import Method, TORCHVISION_INIT_ON_DIGITS, glyphs_budget, GREY_VIEWS_ON_GLYPHS
from methods.components.heads import mlp
from methods.components.momentum import cosine_increase, ema_update_, momentum_copy
from methods.components.views import MultiView, augment_from_cfg
from methods.losses import byol_loss

GRILL = "Grill et al. 2020 (BYOL)"


class BYOL(Method):
    name = "byol"
    family = "self-distillation"
    description = "BYOL: online encoder + predictor regress an EMA target's projection of the other view"
    source = "Grill et al., Bootstrap Your Own Latent, NeurIPS 2020"
    recipes = {
        "default": {
            "backbone.name": P("resnet50", f"{GRILL}, Sec. 3.3: ResNet-50"),
            "backbone.zero_init_residual": P(True, "deepmind-research byol/utils/networks.py: haiku ResNet v1 "
                                                   "bottleneck blocks, last BN scale_init=zeros (hk.nets.ResNet BlockV1)"),
            "method.proj_hidden": P(4096, f"{GRILL}, Sec. 3.3: MLP 4096 hidden (BN, ReLU)"),
            "method.proj_dim": P(256, f"{GRILL}, Sec. 3.3: 256-d projection"),
            "method.pred_hidden": P(4096, f"{GRILL}, Sec. 3.3: predictor has the projector's architecture"),
            "method.tau_base": P(0.996, f"{GRILL}, Sec. 3.3: tau_base = 0.996, raised to 1 by a cosine"),
            "method.aug.crop_scale": P([0.08, 1.0], f"{GRILL}, App. B, Table 6"),
            "method.aug.flip": P(True, f"{GRILL}, App. B, Table 6"),
            "method.aug.jitter": P(0.4, f"{GRILL}, App. B, Table 6: brightness 0.4, contrast 0.4"),
            "method.aug.saturation": P(0.2, f"{GRILL}, App. B, Table 6: saturation 0.2"),
            "method.aug.hue": P(0.1, f"{GRILL}, App. B, Table 6: hue 0.1"),
            "method.aug.jitter_p": P(0.8, f"{GRILL}, App. B, Table 6"),
            "method.aug.grayscale_p": P(0.2, f"{GRILL}, App. B, Table 6"),
            "method.view1.blur_p": P(1.0, f"{GRILL}, App. B, Table 6: blur 1.0 / 0.1"),
            "method.view1.solarize_p": P(0.0, f"{GRILL}, App. B, Table 6: solarisation 0.0 / 0.2"),
            "method.view2.blur_p": P(0.1, f"{GRILL}, App. B, Table 6"),
            "method.view2.solarize_p": P(0.2, f"{GRILL}, App. B, Table 6"),
            "train.optimizer": P("lars", f"{GRILL}, Sec. 3.3: LARS, biases and BN excluded from wd and adaptation"),
            "train.lr": P(0.2 * 4096 / 256, f"{GRILL}, Sec. 3.3: lr 0.2 x batch/256"),
            "train.weight_decay": P(1.5e-6, f"{GRILL}, Sec. 3.3"),
            "train.momentum": P(0.9, f"{GRILL}, Sec. 3.3"),
            "train.batch_size": P(4096, f"{GRILL}, Sec. 3.3"),
            "train.epochs": P(1000, f"{GRILL}, Sec. 3.3"),
            "train.warmup_epochs": P(10, f"{GRILL}, Sec. 3.3"),
            "train.schedule": P("cosine", f"{GRILL}, Sec. 3.3"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            **TORCHVISION_INIT_ON_DIGITS,
            "method.proj_hidden": 512,
            "method.proj_dim": 128,
            "method.pred_hidden": 512,
            # ~350 steps in a run: 0.99 lets the target follow the online network in time.
            "method.tau_base": 0.99,
            "method.aug.crop_scale": [0.4, 1.0],
            "method.aug.flip": False,  # digits are not mirror-symmetric
            "train.batch_size": 64,
            "train.lr": 1.0,
            "train.epochs": 8,
            "train.warmup_epochs": 1,
        },
        "glyphs": glyphs_budget(4, GREY_VIEWS_ON_GLYPHS),
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        d, hidden, out = self.backbone.num_features, int(cfg["method.proj_hidden"]), int(cfg["method.proj_dim"])
        self.projector = mlp([d, hidden, out])
        self.predictor = mlp([out, int(cfg["method.pred_hidden"]), out])
        self.target = momentum_copy(self.online())
        self._schedule = None

    def online(self) -> nn.ModuleDict:
        # The EMA's source, built from the registered modules so the state dict holds them once.
        return nn.ModuleDict({"backbone": self.backbone, "projector": self.projector})

    def train_transform(self):
        return MultiView([augment_from_cfg(self.cfg, "method.view1"), augment_from_cfg(self.cfg, "method.view2")])

    def training_step(self, batch):
        (x1, x2), _ = batch
        p1 = self.predictor(self.projector(self.backbone(x1)))
        p2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            z1 = self.target["projector"](self.target["backbone"](x1))
            z2 = self.target["projector"](self.target["backbone"](x2))
        # Symmetrised: each view's prediction regresses the other view's target (Sec. 3.1).
        return {"loss": byol_loss(p1, z2) + byol_loss(p2, z1)}

    def tau(self, step: int, total_steps: int) -> float:
        """tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2 (Sec. 3.3)."""
        if self._schedule is None or self._schedule[0] != total_steps:
            self._schedule = (total_steps, cosine_increase(float(self.cfg["method.tau_base"]), 1.0, total_steps))
        return float(self._schedule[1][step])

    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update_(self.target, self.online(), self.tau(step, total_steps))

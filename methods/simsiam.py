"""SimSiam: a Siamese network whose predictor regresses the other view's projection under a
stop-gradient, with neither negatives nor a momentum encoder (Chen & He, CVPR 2021).

The predictor's learning rate stays at ``train.lr`` while the rest warms up and decays
(``method.fix_pred_lr``, the official command's ``--fix-pred-lr``; the paper, Sec. 4.2 /
Table 1c: 68.1% vs 67.7% with a decayed one), and the ResNet's residual branches start at
zero (``backbone.zero_init_residual``, as the official builder sets).
"""
from __future__ import annotations

from harness.config import Config, P
from methods.base import Method, TORCHVISION_INIT_ON_DIGITS, glyphs_budget
from methods.components.heads import mlp
from methods.components.views import MultiView, augment_from_cfg
from methods.losses import simsiam_loss

CHEN_HE = "Chen & He 2021 (SimSiam)"
CODE = "facebookresearch/simsiam"


class SimSiam(Method):
    name = "simsiam"
    family = "self-distillation"
    description = "SimSiam: predictor regresses the other view's projection under stop-gradient"
    source = "Chen & He, Exploring Simple Siamese Representation Learning, CVPR 2021"
    recipes = {
        "default": {
            "backbone.name": P("resnet50", f"{CHEN_HE}, Sec. 3: ResNet-50"),
            "backbone.zero_init_residual": P(True, f"{CODE} simsiam/builder.py: base_encoder(..., zero_init_residual=True)"),
            "method.proj_dim": P(2048, f"{CHEN_HE}, Sec. 3: projection MLP, 2048-d layers"),
            "method.proj_layers": P(3, f"{CHEN_HE}, Sec. 3: 3 layers, BN on each incl. the output (no ReLU there)"),
            "method.pred_hidden": P(512, f"{CHEN_HE}, Sec. 3: prediction MLP bottleneck 512"),
            "method.fix_pred_lr": P(True, f"{CODE} README, pre-training command: --fix-pred-lr ({CHEN_HE}, Table 1c)"),
            "method.aug.crop_scale": P([0.2, 1.0], f"{CODE} main_simsiam.py (MoCo v2's augmentation)"),
            "method.aug.flip": P(True, f"{CODE} main_simsiam.py"),
            "method.aug.jitter": P(0.4, f"{CODE} main_simsiam.py: ColorJitter(0.4, 0.4, 0.4, 0.1)"),
            "method.aug.hue": P(0.1, f"{CODE} main_simsiam.py"),
            "method.aug.jitter_p": P(0.8, f"{CODE} main_simsiam.py"),
            "method.aug.grayscale_p": P(0.2, f"{CODE} main_simsiam.py"),
            "method.aug.blur_p": P(0.5, f"{CODE} main_simsiam.py: GaussianBlur([.1, 2.]), p 0.5"),
            "train.optimizer": P("sgd", f"{CHEN_HE}, Sec. 3"),
            "train.lr": P(0.05 * 512 / 256, f"{CHEN_HE}, Sec. 3: lr 0.05 x batch/256"),
            "train.momentum": P(0.9, f"{CHEN_HE}, Sec. 3"),
            "train.weight_decay": P(1e-4, f"{CHEN_HE}, Sec. 3"),
            "train.batch_size": P(512, f"{CHEN_HE}, Sec. 3"),
            "train.epochs": P(100, f"{CHEN_HE}, Sec. 4 (100-epoch pre-training)"),
            "train.warmup_epochs": P(0, f"{CHEN_HE}: no warm-up at batch 512"),
            "train.schedule": P("cosine", f"{CHEN_HE}, Sec. 3: cosine decay"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            **TORCHVISION_INIT_ON_DIGITS,
            "method.proj_dim": 256,
            "method.pred_hidden": 64,  # the paper's 4x bottleneck
            "method.aug.crop_scale": [0.4, 1.0],
            "method.aug.flip": False,  # digits are not mirror-symmetric
            "train.batch_size": 64,
            "train.lr": 0.05,
            "train.epochs": 8,
            "train.warmup_epochs": 1,
        },
        "glyphs": glyphs_budget(6),
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        dim, layers = int(cfg["method.proj_dim"]), int(cfg["method.proj_layers"])
        # Official builder.py: hidden layers Linear(no bias)-BN-ReLU, output Linear followed by
        # BN(affine=False); its bias is frozen there and is a no-op here (BN removes it).
        self.projector = mlp([self.backbone.num_features] + [dim] * layers, last_norm="plain")
        self.predictor = mlp([dim, int(cfg["method.pred_hidden"]), dim])

    def fixed_lr_parameters(self):
        return list(self.predictor.parameters()) if bool(self.cfg["method.fix_pred_lr"]) else []

    def train_transform(self):
        return MultiView([augment_from_cfg(self.cfg, "method.view1"), augment_from_cfg(self.cfg, "method.view2")])

    def training_step(self, batch):
        (x1, x2), _ = batch
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # Eq. 2 with stop-gradient on the projections (Algorithm 1: z.detach()).
        loss = 0.5 * simsiam_loss(p1, z2.detach()) + 0.5 * simsiam_loss(p2, z1.detach())
        return {"loss": loss}

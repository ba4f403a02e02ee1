"""Barlow Twins: make the cross-correlation matrix of two views' embeddings close to the
identity (Zbontar, Jing, Misra, LeCun & Deny, ICML 2021)."""
from __future__ import annotations

import torch

from harness.config import Config, P
from harness.errors import UsageError
from methods.base import Method, TORCHVISION_INIT_ON_DIGITS, glyphs_budget
from methods.components.heads import mlp
from methods.losses import barlow_twins_loss_distributed
from methods.simclr import global_batchnorm, two_views

ZBONTAR = "Zbontar et al. 2021 (Barlow Twins)"
CODE = "facebookresearch/barlowtwins main.py"


def byol_augment_recipe(source: str) -> dict:
    """BYOL's asymmetric views (Grill et al. 2020, App. B, Table 6), as Barlow Twins and
    VICReg use them: crop 0.08-1, flip, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
    greyscale 0.2; blur p 1.0 / 0.1 and solarisation p 0 / 0.2 for view 1 / view 2."""
    return {
        "method.aug.crop_scale": P([0.08, 1.0], f"{source}: RandomResizedCrop(224) (area 0.08-1)"),
        "method.aug.flip": P(True, f"{source}: RandomHorizontalFlip(p=0.5)"),
        "method.aug.jitter": P(0.4, f"{source}: ColorJitter(brightness=0.4, contrast=0.4, ...)"),
        "method.aug.saturation": P(0.2, f"{source}: ColorJitter(saturation=0.2)"),
        "method.aug.hue": P(0.1, f"{source}: ColorJitter(hue=0.1)"),
        "method.aug.jitter_p": P(0.8, f"{source}: RandomApply(ColorJitter, p=0.8)"),
        "method.aug.grayscale_p": P(0.2, f"{source}: RandomGrayscale(p=0.2)"),
        "method.view1.blur_p": P(1.0, f"{source}: GaussianBlur(p=1.0) on the first view"),
        "method.view2.blur_p": P(0.1, f"{source}: GaussianBlur(p=0.1) on the second view"),
        "method.view1.solarize_p": P(0.0, f"{source}: Solarization(p=0.0) on the first view"),
        "method.view2.solarize_p": P(0.2, f"{source}: Solarization(p=0.2) on the second view"),
    }


# The embedded 32 px digits suite on a 2-core CPU, shared by Barlow Twins and VICReg.
DIGITS_BYOL_VIEWS = {
    "backbone.name": "resnet_small",
    "backbone.width": 0.5,
    **TORCHVISION_INIT_ON_DIGITS,
    "method.aug.flip": False,  # digits are not mirror-symmetric
    "method.aug.crop_scale": [0.3, 1.0],
    # No blur at 32 px (as SimCLR's CIFAR-10 runs, Chen et al. 2020, App. B.9); view 2 keeps
    # its solarisation, so the two views stay asymmetric.
    "method.view1.blur_p": 0.0,
    "method.view2.blur_p": 0.0,
    # solo-learn's CIFAR recipes (scripts/pretrain/cifar/{barlow,vicreg}.yaml): LARS with
    # eta 0.02, lr 0.3, weight decay 1e-4.
    "train.lars_eta": 0.02,
    "train.lr": 0.3,
    "train.weight_decay": 1e-4,
    "train.batch_size": 128,
    # 264 steps, each two backbone passes of 128 images. Fewer epochs lose much: VICReg
    # reaches kNN 57 % after 12 epochs in the digits sweep but only 36 % (random init 35 %)
    # after 9.
    "train.epochs": 12,
    "train.warmup_epochs": 1,
}


class OneDimLrScale:
    """A learning rate for biases and norm parameters that is ``ratio`` times the weights'
    one, for optimizers where scaling those gradients is the same thing.

    The trainer builds one optimizer over its own parameter groups and sets one lr; it has
    no per-group lr from methods. With SGD or LARS (momentum buffers linear in the gradient;
    the harness LARS gives 1-D parameters neither weight decay nor the trust ratio, and the
    harness puts no weight decay on them either), multiplying their gradients by ``ratio``
    before the step is exactly training them at ``ratio`` x lr. Not so for AdamW, which is
    invariant to gradient scale: that combination is refused.
    """

    def check_lr_ratio(self, cfg: Config) -> None:
        ratio = float(cfg["method.bias_lr_ratio"])
        if ratio != 1.0 and str(cfg["train.optimizer"]).lower() == "adamw":
            raise UsageError(f"method.bias_lr_ratio={ratio:g} is applied by scaling gradients, which AdamW "
                             "ignores; use train.optimizer=lars or sgd, or method.bias_lr_ratio=1")

    def scale_one_dim_grads(self, ratio: float) -> None:
        if ratio == 1.0:
            return
        for p in self.parameters():
            if p.ndim <= 1 and p.grad is not None:
                p.grad.mul_(ratio)


class BarlowTwins(OneDimLrScale, Method):
    name = "barlow_twins"
    family = "redundancy reduction"
    description = "Barlow Twins: cross-correlation of two views' embeddings driven to the identity"
    source = "Zbontar, Jing, Misra, LeCun & Deny, Barlow Twins, ICML 2021"
    recipes = {
        "default": {
            "backbone.name": P("resnet50", f"{ZBONTAR}, Sec. 2: ResNet-50"),
            "backbone.zero_init_residual": P(True, f"{CODE}: torchvision.models.resnet50(zero_init_residual=True)"),
            **byol_augment_recipe(f"{CODE} Transform (BYOL's augmentations, {ZBONTAR} Sec. 2)"),
            "method.projector": P([8192, 8192, 8192], f"{CODE} --projector 8192-8192-8192 (Sec. 2: 3 linear layers of 8192, BN+ReLU between)"),
            "method.lambd": P(0.0051, f"{CODE} --lambd 0.0051 (the paper, Sec. 2, reports lambda = 5e-3; the official code's value is used)"),
            "method.scale_loss": P(1.0, f"{CODE}: no loss scale (the README's best-model command ran older code with "
                                        "--scale-loss 0.024, which the current code folds into the bias lr 0.0048 = 0.2 x 0.024)"),
            "method.bias_lr_ratio": P(0.0048 / 0.2, f"{CODE}: --learning-rate-biases 0.0048 vs --learning-rate-weights 0.2 (Sec. 2)"),
            "method.global_bn": P(True, f"{CODE}: nn.SyncBatchNorm.convert_sync_batchnorm(model)"),
            "train.optimizer": P("lars", f"{ZBONTAR}, Sec. 2: LARS; {CODE} LARS excludes biases and BN from weight decay and adaptation"),
            "train.lr": P(1.6, f"{CODE} adjust_learning_rate: 0.2 x batch/256 = 0.2 x 2048/256 for the weights"),
            "train.weight_decay": P(1e-6, f"{CODE} --weight-decay 1e-6 (the paper, Sec. 2, states 1.5e-6)"),
            "train.batch_size": P(2048, f"{ZBONTAR}, Sec. 2: batch size 2048"),
            "train.epochs": P(1000, f"{ZBONTAR}, Sec. 2: 1000 epochs (73.2 % linear, Table 1)"),
            "train.warmup_epochs": P(10, f"{ZBONTAR}, Sec. 2: 10 warmup epochs"),
            "train.schedule": P("cosine", f"{ZBONTAR}, Sec. 2: cosine decay"),
            "train.min_lr_ratio": P(0.001, f"{CODE} adjust_learning_rate: end_lr = base_lr * 0.001 (the paper: 'by a factor of 1000')"),
        },
    }
    suite_profiles = {
        "digits": {
            **DIGITS_BYOL_VIEWS,
            "method.projector": [512, 512, 512],
            # Best of 0.0051 / 0.02 / 0.05 in a 12-epoch digits sweep (a 512-d projector, not
            # 8192: the off-diagonal term has 256x fewer entries).
            "method.lambd": 0.02,
            # Barlow Twins starts slowly on these images: kNN top-1 21.7 % at 12 epochs, 30.4 %
            # at 40, 55.2 % at 80 (linear 68.2 %), against 35.4 % (31.2 %) for the random
            # initialisation (bench/RESULTS.md, issue 4). 80 epochs = 1,760 steps.
            "train.epochs": 80,
        },
        "glyphs": glyphs_budget(6),
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.check_lr_ratio(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        dims = [self.backbone.num_features, *[int(d) for d in cfg["method.projector"]]]
        # Linear (no bias) - BN - ReLU between layers, a plain bias-free last layer, as the
        # official projector.
        self.projector = mlp(dims, bias=False)
        global_batchnorm(self, bool(cfg["method.global_bn"]))

    def train_transform(self):
        return two_views(self.cfg)

    def embed(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the two views, each view its own pass (own BN statistics), as the
        official ``BarlowTwins.forward``."""
        return tuple(self.projector(self.backbone(v)) for v in views)

    def training_step(self, batch):
        z1, z2 = self.embed(batch[0])
        loss = barlow_twins_loss_distributed(z1, z2, float(self.cfg["method.lambd"]))
        return {"loss": float(self.cfg["method.scale_loss"]) * loss}

    def before_optimizer_step(self, step, total_steps, steps_per_epoch):
        self.scale_one_dim_grads(float(self.cfg["method.bias_lr_ratio"]))

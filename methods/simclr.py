"""SimCLR: two augmented views of each image, a nonlinear projection head, and the NT-Xent
loss over the 2N views of a batch (Chen, Kornblith, Norouzi & Hinton, ICML 2020)."""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

from harness.config import Config, P
from methods.base import Method, TORCHVISION_INIT_ON_DIGITS, glyphs_budget
from methods.components.distributed import is_distributed
from methods.components.heads import mlp
from methods.components.views import MultiView, augment_from_cfg
from methods.losses import nt_xent_distributed

CHEN = "Chen et al. 2020 (SimCLR)"
CODE = "google-research/simclr (v1) run.py"


def global_batchnorm(module: nn.Module, enabled: bool) -> nn.Module:
    """Batch statistics over the global batch of every device (SimCLR's "global BN", Chen
    et al. 2020, Sec. 2.2; the official code's ``--global_bn=True``), by converting every
    BatchNorm to ``nn.SyncBatchNorm``.

    Conversion happens only under ``torch.distributed`` with more than one process and a
    backend other than gloo: SyncBatchNorm needs accelerator tensors (CUDA/XPU), so on CPU
    with gloo it is not available and each process keeps its local statistics (a warning
    says so). In one process there is nothing to convert: BN already sees the whole batch.
    """
    if not enabled or not is_distributed():
        return module
    if dist.get_backend() == "gloo":
        warnings.warn("global BN requested, but SyncBatchNorm is not available on the gloo (CPU) "
                      "backend: BatchNorm statistics stay per process", stacklevel=2)
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def two_views(cfg: Config) -> MultiView:
    """Both views from ``method.view1.*`` / ``method.view2.*``, falling back to the
    symmetric ``method.aug.*`` values (see ``augment_from_cfg``)."""
    return MultiView([augment_from_cfg(cfg, "method.view1"), augment_from_cfg(cfg, "method.view2")])


def simclr_augment_recipe(strength: float = 1.0, blur_p: float = 0.5) -> dict:
    """SimCLR's augmentation (Chen et al. 2020, App. A): random resized crop (area 0.08-1),
    flip, colour jitter of strength s (brightness/contrast/saturation 0.8s, hue 0.2s) with
    probability 0.8, greyscale 0.2, Gaussian blur (sigma 0.1-2, kernel 10% of the side)."""
    src = f"{CHEN}, App. A"
    return {
        "method.aug.crop_scale": P([0.08, 1.0], f"{src}: crop of 0.08-1 of the area, aspect 3/4-4/3"),
        "method.aug.flip": P(True, f"{src}: horizontal flip"),
        "method.aug.jitter": P(0.8 * strength, f"{src}: colour jitter strength {strength:g} (0.8s)"),
        "method.aug.saturation": P(None, f"{src}: saturation as brightness/contrast (0.8s)"),
        "method.aug.hue": P(0.2 * strength, f"{src}: hue 0.2s"),
        "method.aug.jitter_p": P(0.8, f"{src}: jitter applied with probability 0.8"),
        "method.aug.grayscale_p": P(0.2, f"{src}: greyscale with probability 0.2"),
        "method.aug.blur_p": P(blur_p, f"{src}: Gaussian blur with probability 0.5 (ImageNet)"),
        "method.aug.solarize_p": P(0.0, f"{src}: no solarisation"),
    }


def simclr_recipe(epochs: int) -> dict:
    return {
        "backbone.name": P("resnet50", f"{CHEN}, Sec. 2.3 (default setting): ResNet-50"),
        "backbone.zero_init_residual": P(True, "google-research/simclr resnet.py: last BN of each block init_zero=True"),
        **simclr_augment_recipe(),
        "method.temperature": P(0.1, f"{CODE} --temperature=0.1 (README ImageNet command; Table 5 / B.5: 0.1 best at batch 4096)"),
        "method.proj_hidden": P(2048, f"{CHEN}, Sec. 2.1: one hidden layer, as wide as the 2048-d representation"),
        "method.proj_dim": P(128, f"{CODE} --head_proj_dim=128 (Sec. 2.3: a 128-d latent space)"),
        "method.global_bn": P(True, f"{CHEN}, Sec. 2.2 (global BN); {CODE} --global_bn=True"),
        "train.optimizer": P("lars", f"{CHEN}, Sec. 2.2: LARS for all batch sizes"),
        "train.lr": P(4.8, f"{CHEN}, Sec. 2.3: 4.8 = 0.3 x BatchSize/256; {CODE} --learning_rate=0.3 (per 256)"),
        "train.momentum": P(0.9, f"{CODE} --momentum=0.9"),
        "train.weight_decay": P(1e-6, f"{CHEN}, Sec. 2.3: weight decay 1e-6"),
        "train.batch_size": P(4096, f"{CHEN}, Sec. 2.3: batch size 4096"),
        "train.epochs": P(epochs, f"{CHEN}: 100 epochs by default (Sec. 2.3), 1000 for the linear-evaluation result (Table 6, 69.3 %)"),
        "train.warmup_epochs": P(10, f"{CHEN}, Sec. 2.3: linear warmup for 10 epochs"),
        "train.schedule": P("cosine", f"{CHEN}, Sec. 2.3: cosine decay without restarts"),
    }


# Shared by SimCLR and SupCon: the embedded 32 px digits suite on a 2-core CPU.
DIGITS_TWO_VIEW = {
    "backbone.name": "resnet_small",
    "backbone.width": 0.5,
    **TORCHVISION_INIT_ON_DIGITS,
    # Digits are not mirror-symmetric, and SimCLR's CIFAR-10 runs (App. B.9, README) drop
    # the blur at 32 px and halve the colour jitter strength.
    "method.aug.flip": False,
    "method.aug.crop_scale": [0.3, 1.0],
    "method.aug.jitter": 0.4,
    "method.aug.hue": 0.1,
    "method.aug.blur_p": 0.0,
    "method.proj_hidden": 512,
    "method.proj_dim": 128,
    # LARS with a larger trust coefficient, as solo-learn's CIFAR recipes (scripts/pretrain/
    # cifar/*.yaml: eta 0.02, lr 0.3-0.4): with eta 0.001 a 264-step run hardly moves the
    # weights (12-epoch digits sweep, SimCLR kNN top-1: 47 % with eta 0.001 and lr 1, 58-64 %
    # with eta 0.02 and lr 0.3; random init 35 %). The paper's temperature 0.1 stays: 0.2 and
    # 0.5 did worse.
    "train.lars_eta": 0.02,
    "train.lr": 0.3,
    "train.batch_size": 128,
    "train.epochs": 12,
    "train.warmup_epochs": 1,
}


class SimCLR(Method):
    name = "simclr"
    family = "contrastive"
    description = "SimCLR: NT-Xent over two augmented views per image, nonlinear projection head, LARS"
    source = "Chen, Kornblith, Norouzi & Hinton, A Simple Framework for Contrastive Learning, ICML 2020"
    recipes = {
        "default": simclr_recipe(1000),
        "ep100": simclr_recipe(100),
    }
    suite_profiles = {
        "digits": DIGITS_TWO_VIEW,
        "glyphs": glyphs_budget(6),
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        d = self.backbone.num_features
        # Linear-BN-ReLU-Linear-BN as in the v1 code's "nonlinear" head; the last BN has no
        # bias there (center=False), so its shift stays frozen at zero.
        self.projector = mlp([d, int(cfg["method.proj_hidden"]), int(cfg["method.proj_dim"])], last_norm="affine")
        self.projector[-1].bias.requires_grad_(False)
        global_batchnorm(self, bool(cfg["method.global_bn"]))

    def train_transform(self):
        return two_views(self.cfg)

    def embed(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections of the two views. One pass over the 2N images, as the official code
        (the BN statistics are those of both views together)."""
        z = self.projector(self.backbone(torch.cat(views)))
        return z.chunk(2)

    def training_step(self, batch):
        views = batch[0]
        z1, z2 = self.embed(views)
        return {"loss": nt_xent_distributed(z1, z2, float(self.cfg["method.temperature"]))}

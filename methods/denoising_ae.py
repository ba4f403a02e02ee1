"""Denoising autoencoder: reconstruct the clean image from a corrupted one
(Vincent et al., ICML 2008; JMLR 2010 for Gaussian and salt-and-pepper noise and the
emphasised loss)."""
from __future__ import annotations

import torch
from torchvision.transforms import v2 as T

from harness.config import Config, P
from harness.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize
from harness.errors import UsageError
from methods.base import Method
from methods.components.decoders import ConvDecoder, feature_map_size

VINCENT08 = "Vincent et al. 2008"
VINCENT10 = "Vincent et al. 2010 (JMLR), Sec. 4.2 and 4.3"
NOISES = ("masking", "gaussian", "salt_pepper")


def corrupt(x: torch.Tensor, kind: str, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [C, H, W] in [0, 1] -> (corrupted x, mask [1, H, W] of corrupted pixels).

    masking: a fraction ``level`` of pixels set to 0 (Vincent 2008); salt_pepper: a fraction
    set to 0 or 1 at random; gaussian: N(0, level^2) added to every pixel (all corrupted).
    Pixels, not channels, are the unit, so a corrupted pixel carries no colour hint.
    """
    _, h, w = x.shape
    if kind == "gaussian":
        return (x + torch.randn_like(x) * level).clamp(0, 1), torch.ones(1, h, w)
    mask = (torch.rand(1, h, w) < level).float()
    if kind == "masking":
        fill = torch.zeros_like(x)
    elif kind == "salt_pepper":
        fill = (torch.rand(1, h, w) < 0.5).float().expand_as(x)
    else:
        raise UsageError(f"method.noise={kind!r}: expected one of {', '.join(NOISES)}")
    return x * (1 - mask) + fill * mask, mask


def denoising_loss(recon: torch.Tensor, target: torch.Tensor, corrupted: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Emphasised squared error (Vincent 2010, Sec. 4.3): weight ``alpha`` on corrupted
    pixels, ``beta`` on the others. recon, target: [B, C, H, W]; corrupted: [B, 1, H, W] in
    {0, 1}. Returns the weighted sum of squared errors divided by the number of elements."""
    weights = alpha * corrupted + beta * (1 - corrupted)
    return (weights * (recon - target) ** 2).mean()


class DenoisingTransform:
    def __init__(self, image_size: int, kind: str, level: float):
        self.kind, self.level = kind, level
        self.aug = T.Compose([T.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
                              T.ToImage(), T.ToDtype(torch.float32, scale=True)])
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, img):
        clean = self.aug(img)
        noisy, mask = corrupt(clean, self.kind, self.level)
        # The encoder sees normalised inputs like every evaluation will; the target stays in [0, 1].
        return (noisy - self.mean) / self.std, clean, mask


class DenoisingAE(Method):
    name = "denoising_ae"
    family = "reconstruction"
    description = "Denoising autoencoder: reconstruct clean pixels from masked / Gaussian / salt-and-pepper input"
    source = "Vincent et al., ICML 2008; JMLR 2010"
    recipes = {
        "default": {
            "backbone.name": P("resnet50", "harness choice (the paper uses shallow MLPs)"),
            "method.noise": P("masking", f"{VINCENT08}: masking noise"),
            "method.noise_level": P(0.25, f"{VINCENT08}: 25% destroyed inputs"),
            "method.alpha": P(1.0, f"{VINCENT10}: emphasis on corrupted components"),
            "method.beta": P(0.5, f"{VINCENT10}: weight on uncorrupted components"),
            "train.optimizer": P("adamw", "harness choice"),
            "train.lr": P(1e-3, "harness choice"),
            "train.weight_decay": P(0.0, "harness choice"),
            "train.epochs": P(100, "harness choice"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "method.noise_level": 0.5,
            "train.batch_size": 64,
            "train.lr": 2e-3,
            "train.epochs": 8,
            "train.warmup_epochs": 1,
        },
    }
    reconstructs = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        size = int(cfg["data.image_size"])
        if cfg["method.noise"] not in NOISES:
            raise UsageError(f"method.noise={cfg['method.noise']!r}: expected one of {', '.join(NOISES)}")
        self.backbone = self.build_backbone(size)
        channels, side = feature_map_size(self.backbone, size)
        self.decoder = ConvDecoder(channels, side, size)

    def train_transform(self):
        return DenoisingTransform(int(self.cfg["data.image_size"]), self.cfg["method.noise"], float(self.cfg["method.noise_level"]))

    def reconstruct(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input shown in [0, 1], target, prediction), each [B, 3, H, W]."""
        (noisy, clean, _), _ = batch
        pred = torch.sigmoid(self.decoder(self.backbone.forward_maps(noisy)))
        return denormalize(noisy), clean, pred

    def training_step(self, batch):
        (noisy, clean, mask), _ = batch
        pred = torch.sigmoid(self.decoder(self.backbone.forward_maps(noisy)))
        return {"loss": denoising_loss(pred, clean, mask, float(self.cfg["method.alpha"]), float(self.cfg["method.beta"]))}

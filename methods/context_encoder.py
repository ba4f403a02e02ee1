"""Context encoders: inpaint a masked region from its surroundings, with an L2 loss and an
adversarial loss (Pathak et al., CVPR 2016)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torchvision.transforms import v2 as T

from harness.config import Config, P
from harness.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize
from harness.errors import UsageError
from methods.base import Method
from methods.components.decoders import ConvDecoder, feature_map_size

PATHAK = "Pathak et al. 2016"
MASKS = ("central", "random_block", "random_region")


def make_mask(size: int, kind: str, fraction: float) -> torch.Tensor:
    """A [1, size, size] {0, 1} mask (1 = to be filled in) covering about ``fraction``.

    central: the centre square (Pathak et al., Sec. 3.3, "central region");
    random_block: random squares until the area is reached (Sec. 3.3, "random block");
    random_region: a random smooth blob, thresholded low-frequency noise (the paper draws
    shapes from PASCAL VOC segmentation masks, which the embedded suite does not have).
    """
    if kind == "central":
        side = int(round(size * fraction ** 0.5))
        m = torch.zeros(1, size, size)
        lo = (size - side) // 2
        m[:, lo:lo + side, lo:lo + side] = 1
        return m
    if kind == "random_block":
        m = torch.zeros(1, size, size)
        side = max(2, int(round(size * (fraction / 4) ** 0.5)))  # about 4+ blocks per image
        while m.mean() < fraction:
            y, x = torch.randint(0, size - side + 1, (2,)).tolist()
            m[:, y:y + side, x:x + side] = 1
        return m
    if kind == "random_region":
        noise = F.interpolate(torch.rand(1, 1, 4, 4), size=(size, size), mode="bicubic", align_corners=False)[0]
        return (noise >= noise.flatten().quantile(1 - fraction)).float()
    raise UsageError(f"method.mask={kind!r}: expected one of {', '.join(MASKS)}")


def masked_l2_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked pixels only. pred, target: [B, C, H, W]; mask: [B, 1, H, W]."""
    return ((pred - target) ** 2 * mask).sum() / (mask.sum() * pred.shape[1]).clamp_min(1)


class Discriminator(nn.Module):
    """A small DCGAN-style discriminator (strided convs, LeakyReLU), as in Pathak et al."""

    def __init__(self, size: int, width: int = 32):
        super().__init__()
        layers, c, s = [], 3, size
        while s > 4:
            layers += [nn.Conv2d(c, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c, width, s = width, width * 2, s // 2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * s * s, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


class MaskedImage:
    def __init__(self, size: int, kind: str, fraction: float):
        self.size, self.kind, self.fraction = size, kind, fraction
        self.aug = T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), T.RandomHorizontalFlip(),
                              T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __call__(self, img):
        return self.aug(img), make_mask(self.size, self.kind, self.fraction)


class ContextEncoder(Method):
    name = "context_encoder"
    family = "reconstruction"
    description = "Context encoder: inpaint masked regions (L2 + adversarial loss), encoder-decoder"
    source = "Pathak et al., CVPR 2016"
    recipes = {
        "default": {
            "backbone.name": P("resnet50", "harness choice (the paper uses AlexNet)"),
            "data.image_size": P(128, f"{PATHAK}, Sec. 4: 128x128 images"),
            "method.mask": P("random_region", f"{PATHAK}, Sec. 3.3: random region masks for feature learning"),
            "method.mask_fraction": P(0.25, f"{PATHAK}, Sec. 3.3: up to 1/4 of the image"),
            "method.adversarial": P(True, f"{PATHAK}, Sec. 3.2: joint L2 + adversarial loss"),
            "method.lambda_rec": P(0.999, f"{PATHAK}, Sec. 4: lambda_rec = 0.999"),
            "method.lambda_adv": P(0.001, f"{PATHAK}, Sec. 4: lambda_adv = 0.001"),
            "train.optimizer": P("adamw", f"{PATHAK}, Sec. 4: Adam"),
            "train.lr": P(2e-4, "harness choice (DCGAN's Adam lr, which the paper builds on)"),
            "train.betas": P([0.5, 0.999], "DCGAN (Radford et al. 2016) Adam betas"),
            "train.weight_decay": P(0.0, "harness choice"),
            "train.batch_size": P(64, "harness choice"),
            "train.epochs": P(100, "harness choice"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "data.image_size": 32,
            "method.mask": "random_block",
            "train.lr": 1e-3,
            "train.epochs": 8,
            "train.warmup_epochs": 1,
        },
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        size = int(cfg["data.image_size"])
        if cfg["method.mask"] not in MASKS:
            raise UsageError(f"method.mask={cfg['method.mask']!r}: expected one of {', '.join(MASKS)}")
        self.backbone = self.build_backbone(size)
        channels, side = feature_map_size(self.backbone, size)
        self.decoder = ConvDecoder(channels, side, size)
        self.discriminator = Discriminator(size) if cfg["method.adversarial"] else None

    def train_transform(self):
        c = self.cfg
        return MaskedImage(int(c["data.image_size"]), c["method.mask"], float(c["method.mask_fraction"]))

    def _inpaint(self, image, mask):
        pred = self.decoder(self.backbone.forward_maps(image * (1 - mask)))  # masked pixels = dataset mean
        return pred, image * (1 - mask) + pred * mask

    def training_step(self, batch):
        (image, mask), _ = batch
        pred, composite = self._inpaint(image, mask)
        rec = masked_l2_loss(pred, image, mask)
        out = {"loss_rec": rec}
        loss = float(self.cfg["method.lambda_rec"]) * rec
        if self.discriminator is not None:
            d = self.discriminator
            # The generator's adversarial term goes through a frozen copy of D's weights, and
            # D's own loss sees a detached composite: one optimizer step trains each side on
            # its own objective only.
            frozen = {k: v.detach() for k, v in d.named_parameters()}
            logit_fake_g = functional_call(d, frozen, (composite,))
            adv_g = F.binary_cross_entropy_with_logits(logit_fake_g, torch.ones_like(logit_fake_g))
            logit_real, logit_fake = d(image), d(composite.detach())
            loss_d = 0.5 * (F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
                            + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake)))
            loss = loss + float(self.cfg["method.lambda_adv"]) * adv_g + loss_d
            out.update(loss_adv=adv_g, loss_disc=loss_d)
        out["loss"] = loss
        return out

    def reconstruct(self, batch):
        (image, mask), _ = batch
        _, composite = self._inpaint(image, mask)
        shown = denormalize(image)
        return shown * (1 - mask) + 0.5 * mask, shown, denormalize(composite)

"""Colorful image colorization: predict the ab colour of each pixel from its lightness L, as
classification over quantised in-gamut ab bins with class rebalancing
(Zhang, Isola & Efros, ECCV 2016)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.config import Config, P
from harness.data.transforms import crop_flip_transform, denormalize
from methods.base import Method
from methods.components.color import annealed_mean, gamut_bins, lab_to_rgb, rebalancing_weights, rgb_to_lab, soft_encode
from methods.components.decoders import ConvDecoder, feature_map_size

ZHANG = "Zhang, Isola & Efros 2016"


def colorization_loss(logits: torch.Tensor, soft_targets: torch.Tensor, pixel_weights: torch.Tensor) -> torch.Tensor:
    """Rebalanced multinomial cross-entropy (Zhang et al. 2016, Eq. 2).

    logits, soft_targets: [B, Q, H, W]; pixel_weights: [B, H, W], the rebalancing weight of
    each pixel's nearest bin. Returns the weighted mean over pixels.
    """
    ce = -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1)
    return (pixel_weights * ce).mean()


def lightness_input(lab: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] -> a 3-channel centred input (the backbone keeps its RGB stem)."""
    return ((lab[:, :1] - 50.0) / 50.0).expand(-1, 3, -1, -1)


class Colorization(Method):
    name = "colorization"
    family = "reconstruction"
    description = "Colorization: L in, ab out as rebalanced classification over quantised in-gamut ab bins"
    source = "Zhang, Isola & Efros, ECCV 2016"
    recipes = {
        "default": {
            "backbone.name": P("resnet50", "Kolesnikov et al. 2019 use ResNet-50 for image-based pretext tasks"),
            "method.grid": P(10, f"{ZHANG}, Sec. 2.1: ab space quantised with grid size 10"),
            "method.soft_k": P(5, f"{ZHANG}, Sec. 2.1: soft-encoding over 5 nearest neighbours"),
            "method.soft_sigma": P(5.0, f"{ZHANG}, Sec. 2.1: Gaussian kernel sigma 5"),
            "method.rebalance_lambda": P(0.5, f"{ZHANG}, Sec. 2.2: lambda = 1/2"),
            "method.rebalance_sigma": P(5.0, f"{ZHANG}, Sec. 2.2: prior smoothed with sigma 5"),
            "method.temperature": P(0.38, f"{ZHANG}, Sec. 2.3: annealed-mean T = 0.38"),
            "method.output_stride": P(4, f"{ZHANG}, Sec. 3: predictions at 1/4 resolution"),
            "method.prior_images": P(10000, "harness choice: images sampled to estimate the ab prior"),
            "train.optimizer": P("adamw", f"{ZHANG}, Sec. 3: ADAM"),
            "train.lr": P(3e-5, f"{ZHANG}, Sec. 3: initial lr 3e-5"),
            "train.betas": P([0.9, 0.99], f"{ZHANG}, Sec. 3: beta1 0.9, beta2 0.99"),
            "train.weight_decay": P(1e-3, f"{ZHANG}, Sec. 3: weight decay 1e-3"),
            "train.batch_size": P(40, f"{ZHANG}, Sec. 3: batch 40"),
            "train.epochs": P(15, "harness choice (the paper trains 450k iterations)"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "train.batch_size": 64,
            "train.lr": 2e-3,
            "train.epochs": 8,
            "train.warmup_epochs": 1,
        },
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        size = int(cfg["data.image_size"])
        self.register_buffer("centres", gamut_bins(int(cfg["method.grid"])).clone(), persistent=False)
        q = self.centres.shape[0]
        # The empirical ab-bin distribution of the training images, counted once before
        # training (``prepare``) as the paper does on ImageNet; a buffer, so checkpoints carry it.
        self.register_buffer("bin_counts", torch.ones(q, dtype=torch.float64))
        self.backbone = self.build_backbone(size)
        channels, side = feature_map_size(self.backbone, size)
        self.out_size = max(size // int(cfg["method.output_stride"]), side)
        self.decoder = ConvDecoder(channels, side, self.out_size, out_channels=q)

    def train_transform(self):
        return crop_flip_transform(int(self.cfg["data.image_size"]), 0.5, normalize=False)  # Lab targets need raw RGB

    @torch.no_grad()
    def prepare(self, dataset) -> None:
        from harness.progress import progress

        n = min(len(dataset), int(self.cfg["method.prior_images"]))
        counts = torch.zeros_like(self.bin_counts)
        for i in progress(torch.linspace(0, len(dataset) - 1, n).long().tolist(), desc="colour prior", leave=False):
            lab = rgb_to_lab(dataset[i][0][None])
            nearest = torch.cdist(lab[0, 1:].flatten(1).t(), self.centres.cpu()).argmin(dim=1)
            counts += torch.bincount(nearest, minlength=counts.numel()).double()
        self.bin_counts.copy_(counts + 1)  # +1: no bin has zero probability

    def _predict(self, lab: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone.forward_maps(lightness_input(lab)))

    def training_step(self, batch):
        rgb, _ = batch
        lab = rgb_to_lab(rgb)
        logits = self._predict(lab)
        ab = F.adaptive_avg_pool2d(lab[:, 1:], logits.shape[-1])
        c = self.cfg
        targets = soft_encode(ab, self.centres, int(c["method.soft_k"]), float(c["method.soft_sigma"]))
        nearest = targets.argmax(dim=1)
        with torch.no_grad():
            weights = rebalancing_weights(self.bin_counts.float(), float(c["method.rebalance_lambda"]),
                                          float(c["method.rebalance_sigma"]), self.centres)
        return {"loss": colorization_loss(logits, targets, weights[nearest])}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The network only ever sees lightness: evaluation images are converted to L too."""
        return self.represent(lightness_input(rgb_to_lab(denormalize(x))))

    def reconstruct(self, batch):
        """(grey input, colour target, colourised prediction by the annealed mean)."""
        rgb, _ = batch
        lab = rgb_to_lab(rgb)
        ab = annealed_mean(self._predict(lab), self.centres, float(self.cfg["method.temperature"]))
        ab = F.interpolate(ab, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        grey = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(ab)], dim=1))
        return grey, rgb, lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1))

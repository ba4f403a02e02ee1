"""Instance discrimination: every image is its own class, scored against a memory bank of
the features of all images with noise-contrastive estimation (Wu, Xiong, Yu & Lin, CVPR
2018). The NCE-against-a-memory-bank pieces here are shared with PIRL.

The bank starts random, as in the official code, and Z is estimated against it on the
first step. A freshly initialised network maps all images to similar embeddings (cosine
about 0.8 here), so while the bank's random rows are replaced by real embeddings every
drawn noise sample becomes "active" and the loss climbs from a few units to several
thousand before the network spreads its embeddings apart. On ImageNet that phase is
spread over the first epoch (5,000 steps); on a few thousand images it is a few dozen
steps, and a loss curve of a short run is dominated by it. Filling the bank with real
embeddings up front does not help: every noise sample is active from step 0 and the first
gradient steps (about m / tau times larger than a softmax loss's) throw the network off.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import Config, P
from methods.base import Method, glyphs_budget
from methods.components.distributed import concat_all_gather
from methods.components.memory import MemoryBank
from methods.components.views import augment_from_cfg
from methods.losses import instdisc_estimate_z, instdisc_nce_loss

WU = "Wu et al. 2018 (InstDisc)"
CODE = "zhirongw/lemniscate.pytorch main.py"


def bank_logits(f: torch.Tensor, bank: MemoryBank, indices: torch.Tensor, k: int, temperature: float):
    """Logits of L2-normalised features f [B, D] against the bank: (positive [B], each
    feature with its own image's entry; negatives [B, k], with ``k`` entries drawn
    uniformly, as the official NCEAverage draws them)."""
    pos = (bank.bank[indices] * f).sum(dim=1) / temperature
    _, noise = bank.sample(f.shape[0], k)
    neg = torch.bmm(noise, f.unsqueeze(2)).squeeze(2) / temperature
    return pos, neg


def nce_fixed_z(pos: torch.Tensor, neg: torch.Tensor, n_data: int, z: torch.Tensor) -> torch.Tensor:
    """NCE loss with the normalising constant held in the 0-dim buffer ``z``: estimated on the
    first call (``z`` <= 0 means not yet) and kept for the rest of training (Wu et al. 2018,
    Sec. 3.2; official NCEAverage: ``if Z < 0: Z = out.mean() * n``)."""
    if float(z) <= 0:
        z.fill_(float(instdisc_estimate_z(pos, neg, n_data)))
    return instdisc_nce_loss(pos, neg, n_data, z)


def bank_loss(f: torch.Tensor, bank: MemoryBank, indices: torch.Tensor, k: int, temperature: float,
              z: torch.Tensor) -> torch.Tensor:
    """The instance-discrimination loss of features f [B, D] against the bank: NCE with ``k``
    noise samples (Wu et al. 2018, Sec. 3.2), or, with ``k == 0``, the exact non-parametric
    softmax over every entry (Eq. 2; the official code's ``--nce-k 0``, which it uses for
    CIFAR-10, where the whole bank is cheap to score)."""
    if k == 0:
        # A copy: the bank is updated in place before backward reads it.
        return F.cross_entropy(f @ bank.bank.clone().t() / temperature, indices)
    return nce_fixed_z(*bank_logits(f, bank, indices, k, temperature), len(bank), z)


class InstDisc(Method):
    name = "instdisc"
    family = "contrastive"
    description = "InstDisc: non-parametric instance discrimination, NCE against a memory bank of features"
    source = "Wu, Xiong, Yu & Lin, Unsupervised Feature Learning via Non-Parametric Instance Discrimination, CVPR 2018"
    needs_index = True
    recipes = {
        "default": {
            "backbone.name": P("resnet50", f"{WU}, Sec. 4: ResNet-50"),
            "method.embedding_dim": P(128, f"{WU}, Sec. 3.1 / {CODE} --low-dim 128"),
            "method.nce_k": P(4096, f"{WU}, Sec. 4 / {CODE} --nce-k 4096 (0 = exact softmax over the bank)"),
            "method.temperature": P(0.07, f"{WU}, Sec. 3.1 / {CODE} --nce-t 0.07"),
            "method.bank_momentum": P(0.5, f"{WU}, Sec. 3.3 / {CODE} --nce-m 0.5"),
            "method.aug.crop_scale": P([0.2, 1.0], f"{CODE}: RandomResizedCrop(224, scale=(0.2, 1.))"),
            "method.aug.flip": P(True, CODE),
            "method.aug.jitter": P(0.4, f"{CODE}: ColorJitter(0.4, 0.4, 0.4, 0.4)"),
            "method.aug.hue": P(0.4, f"{CODE}: ColorJitter(0.4, 0.4, 0.4, 0.4)"),
            "method.aug.jitter_p": P(1.0, f"{CODE}: jitter always applied"),
            "method.aug.grayscale_p": P(0.2, f"{CODE}: RandomGrayscale(p=0.2)"),
            "train.optimizer": P("sgd", f"{WU}, Sec. 4"),
            "train.lr": P(0.03, f"{WU}, Sec. 4 / {CODE} --lr 0.03"),
            "train.momentum": P(0.9, CODE),
            "train.weight_decay": P(1e-4, CODE),
            "train.batch_size": P(256, f"{WU}, Sec. 4 / {CODE}"),
            "train.epochs": P(200, f"{WU}, Sec. 4"),
            "train.warmup_epochs": P(0, CODE),
            "train.schedule": P("step", f"{CODE} adjust_learning_rate: x0.1 at epochs 120 and 160"),
            "train.decay_epochs": P([120, 160], f"{CODE} adjust_learning_rate"),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            # 2,876 images: score the whole bank exactly (Eq. 2), as the official code does on
            # CIFAR-10. NCE's fixed Z, estimated against the random initial bank, is far off
            # once a bank this small fills with real features after a few dozen steps.
            "method.nce_k": 0,
            "method.aug.crop_scale": [0.4, 1.0],
            "method.aug.flip": False,  # digits are not mirror-symmetric
            "train.batch_size": 64,
            "train.lr": 0.06,
            # 80 epochs (3,520 steps): kNN top-1 14.5 % at 20 epochs, 53.8 % at 80, against the
            # random initialisation's 35.4 % (bench/RESULTS.md, issue 4); lr steps at 60 % / 80 %.
            "train.epochs": 80,
            "train.warmup_epochs": 1,
            "train.decay_epochs": [48, 64],
        },
        # The lr steps at 60 % / 80 % of the budget, as in the digits profile.
        "glyphs": glyphs_budget(10, {"train.decay_epochs": [6, 8]}),
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        dim = int(cfg["method.embedding_dim"])
        self.head = nn.Linear(self.backbone.num_features, dim)
        self.memory = MemoryBank(dim)
        self.register_buffer("z", torch.zeros(()))  # NCE normaliser; 0 = not estimated yet

    def prepare(self, dataset) -> None:
        self.memory.allocate(len(dataset))

    def train_transform(self):
        return augment_from_cfg(self.cfg, "method.view")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)

    def training_step(self, batch):
        x, _, indices = batch
        f = self.embed(x)
        loss = bank_loss(f, self.memory, indices, int(self.cfg["method.nce_k"]), float(self.cfg["method.temperature"]), self.z)
        # Under DDP every process keeps the whole bank, so it takes every process's rows.
        self.memory.update(concat_all_gather(indices), concat_all_gather(f), float(self.cfg["method.bank_momentum"]))
        return {"loss": loss}

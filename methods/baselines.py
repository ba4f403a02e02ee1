"""The floor and the ceiling of every table: the same backbone untrained (``random``) and
trained with labels (``supervised``), read out through the same evaluations."""
from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import nn

from harness.config import Config, P
from harness.data.transforms import crop_flip_transform
from harness.errors import UsageError
from methods.base import Method

HE = "He, Zhang, Ren & Sun, Deep Residual Learning, CVPR 2016, Sec. 3.4"
TV = "pytorch/vision references/classification (ResNet-50: SGD lr 0.1, batch 256, 90 epochs, lr x0.1 every 30)"


class Supervised(Method):
    name = "supervised"
    family = "baseline"
    baseline = "ceiling"  # the leaderboard marks it as a ceiling
    description = "baseline: the same backbone trained with labels (cross-entropy), the ceiling of a table"
    source = HE
    uses_unlabeled = False  # every image needs its label
    recipes = {
        "default": {
            "method.crop_scale_min": P(0.08, f"{TV}: RandomResizedCrop"),
            "method.flip": P(True, f"{TV}: RandomHorizontalFlip"),
            "method.label_smoothing": P(0.0, f"{HE}: plain cross-entropy"),
            "method.num_classes": P(1000, "ImageNet-1k"),
            "train.optimizer": P("sgd", HE),
            "train.lr": P(0.1, f"{HE}: lr 0.1 at batch 256"),
            "train.momentum": P(0.9, HE),
            "train.weight_decay": P(1e-4, HE),
            "train.batch_size": P(256, HE),
            "train.epochs": P(90, TV),
            "train.warmup_epochs": P(0, HE),
            "train.schedule": P("step", f"{TV}: lr x0.1 at epochs 30 and 60"),
            "train.decay_epochs": P([30, 60], TV),
        },
    }
    suite_profiles = {
        "digits": {
            "backbone.name": "resnet_small",
            "backbone.width": 0.5,
            "method.num_classes": 10,
            "method.crop_scale_min": 0.5,
            "method.flip": False,  # digits are not mirror-symmetric
            "train.batch_size": 64,
            "train.lr": 0.05,
            "train.epochs": 6,
            "train.warmup_epochs": 1,
            "train.schedule": "cosine",
        },
    }

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))
        # Built here, not on first batch: the optimizer is made from the parameters before training.
        self.classifier = nn.Linear(self.backbone.num_features, int(cfg["method.num_classes"]))

    def prepare(self, dataset) -> None:
        classes = getattr(dataset, "classes", None) or getattr(getattr(dataset, "base", None), "classes", None)
        if not classes:
            raise UsageError("method 'supervised' needs a labelled training split (ImageFolder layout, one folder per class)")
        if len(classes) != self.classifier.out_features:
            raise UsageError(f"method.num_classes={self.classifier.out_features} but the training split has "
                             f"{len(classes)} classes; set method.num_classes={len(classes)}")

    def train_transform(self):
        return crop_flip_transform(int(self.cfg["data.image_size"]), float(self.cfg["method.crop_scale_min"]),
                                   bool(self.cfg["method.flip"]))

    def training_step(self, batch):
        images, labels = batch
        logits = self.classifier(self.backbone(images))
        loss = F.cross_entropy(logits, labels, label_smoothing=float(self.cfg["method.label_smoothing"]))
        return {"loss": loss, "train_acc": (logits.argmax(1) == labels).float().mean()}


class Random(Method):
    name = "random"
    family = "baseline"
    baseline = "floor"  # the leaderboard marks it as a floor
    description = "baseline: the backbone at its random initialisation (no training), the floor of a table"
    source = "harness baseline (the initialisation of the backbone's factory under the run seed)"
    trainable: ClassVar[bool] = False
    recipes = {"default": {"train.epochs": P(0, "untrained by definition")}}
    suite_profiles = {"digits": {"backbone.name": "resnet_small", "backbone.width": 0.5}}

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        if int(cfg["train.epochs"]) != 0:
            raise UsageError(f"method 'random' is untrained: train.epochs must be 0, got {cfg['train.epochs']}")
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))

    def train_transform(self):
        # Never trained on; the pipeline still builds (and hashes) a training set for it.
        return crop_flip_transform(int(self.cfg["data.image_size"]))


class Pixels(Method):
    name = "pixels"
    family = "baseline"
    baseline = "floor"  # the leaderboard marks it as a floor
    description = ("baseline: the normalised image's pixels as the representation, no network; what every method "
                   "must beat (a suite where raw pixels win cannot tell methods apart)")
    source = "harness baseline (the eval transform's normalised pixels, read by the same kNN and linear protocols)"
    trainable: ClassVar[bool] = False
    probes_blocks: ClassVar[bool] = False  # no stages to read
    recipes = {"default": {"train.epochs": P(0, "no network to train"),
                           "backbone.name": P("pixels", "the identity backbone: the image is the representation")}}

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        if int(cfg["train.epochs"]) != 0:
            raise UsageError(f"method 'pixels' has nothing to train: train.epochs must be 0, got {cfg['train.epochs']}")
        if cfg["backbone.name"] != "pixels":
            raise UsageError(f"method 'pixels' reads the image itself: backbone.name must be pixels, "
                             f"got {cfg['backbone.name']!r}")
        self.backbone = self.build_backbone(int(cfg["data.image_size"]))

    def train_transform(self):
        # Never trained on; the pipeline still builds (and hashes) a training set for it.
        return crop_flip_transform(int(self.cfg["data.image_size"]))

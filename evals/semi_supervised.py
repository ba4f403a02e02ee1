"""Semi-supervised fine-tuning on 1% / 10% of the labels (SimCLR protocol).

The whole network (the method's representation plus a new linear head) is fine-tuned on a
labelled subset of the train split and evaluated on val. ImageNet uses SimCLR's published
subset lists (checked by sha256); every other suite a seeded class-balanced subset whose
file list is saved in the eval's folder.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness.config import P, each, integer, number, one_of, optional
from harness.metrics import Metric
from harness.data.loading import EpochSampler, SeededTransformDataset
from harness.data.subsets import balanced_subset, select_listed, simclr_subset
from harness.data.transforms import crop_flip_transform, eval_transform
from harness.errors import UsageError
from harness.optim import LR_SCALINGS, build_optimizer, lr_schedule, scale_lr
from harness.progress import progress
from harness.seeding import derive_seed
from evals.base import Evaluator, top1, top5
from evals.features import extract, topk_correct

SIMCLR = "google-research/simclr README, semi-supervised fine-tuning command"
SIMCLR_V2 = "Chen, Kornblith, Swersky, Norouzi & Hinton, Big Self-Supervised Models (SimCLR v2), NeurIPS 2020"
MMSELFSUP = "open-mmlab/mmselfsup configs/benchmarks/classification/imagenet (imagenet_1percent / 10percent)"


def _folder_name(key, value):
    if not isinstance(value, str):
        raise UsageError(f"{key}={value!r}: expected a folder path holding 1percent.txt / 10percent.txt")


class SemiSupervised(Evaluator):
    name = "semi_supervised"
    protocol = "semi_supervised"
    description = "fine-tune the whole network on 1% / 10% of the labels (SimCLR subsets on ImageNet), top-1/top-5 on val"
    source = SIMCLR_V2
    default_preset = "simclr_v2"
    # top1 / top5 are the first fraction's (1 %); the 10 % top-1 gets a column of its own.
    metrics = (top1("val top-1 fine-tuned on the first fraction of the labels (1 %)"),
               top5("val top-5 fine-tuned on the first fraction of the labels (1 %)"),
               Metric("pct10_top1", "higher", "%", "val top-1 fine-tuned on 10 % of the labels", featured=True))
    headline = "top1"
    rules = {
        "fractions": each(number(0, 100, lo_open=True)), "epochs": each(integer(0)), "batch_size": integer(1),
        "optimizer": one_of("sgd", "lars"), "lr": number(0), "lr_scaling": one_of(*LR_SCALINGS),
        "head_lr_mult": number(0), "momentum": number(0), "weight_decay": number(0),
        "schedule": one_of("cosine", "step"), "milestones": each(number(0)), "gamma": number(0),
        "zero_init_head": one_of(True, False), "crop_scale_min": number(0, 1, lo_open=True),
        "flip": one_of(True, False), "subset_dir": optional(_folder_name),
    }

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        fractions, epochs = cfg["eval.semi_supervised.fractions"], cfg["eval.semi_supervised.epochs"]
        if len(fractions) != len(epochs):
            raise UsageError(f"eval.semi_supervised.epochs={epochs}: expected one entry per fraction {fractions}")
    presets = {
        "simclr_v2": {
            "fractions": P([1, 10], f"{SIMCLR_V2}: 1% and 10% of ImageNet labels"),
            "epochs": P([60, 30], f"{SIMCLR_V2}, App. B: 60 epochs for 1%, 30 for 10%"),
            "batch_size": P(1024, f"{SIMCLR}: --train_batch_size=1024"),
            "optimizer": P("lars", f"{SIMCLR}: --optimizer=lars"),
            "lr": P(0.005, f"{SIMCLR}: --learning_rate=0.005 --learning_rate_scaling=sqrt (0.16 at batch 1024)"),
            "lr_scaling": P("sqrt", SIMCLR),
            "head_lr_mult": P(1.0, SIMCLR),
            "momentum": P(0.9, SIMCLR),
            "weight_decay": P(0.0, f"{SIMCLR}: --weight_decay=0"),
            "schedule": P("cosine", f"{SIMCLR}: cosine decay, --warmup_epochs=0"),
            "milestones": P([], "unused by the cosine schedule"),
            "gamma": P(0.1, "unused by the cosine schedule"),
            "zero_init_head": P(True, f"{SIMCLR}: --zero_init_logits_layer=True"),
            "crop_scale_min": P(0.08, f"{SIMCLR}: random crop and flip only"),
            "flip": P(True, SIMCLR),
            "subset_dir": P(None, "harness: a folder holding 1percent.txt / 10percent.txt; None = the copy shipped with the package (ImageNet)"),
        },
        "mmselfsup": {
            "fractions": P([1, 10], MMSELFSUP),
            "epochs": P([20, 20], f"{MMSELFSUP}: 20 epochs"),
            "batch_size": P(256, f"{MMSELFSUP}: batch 256"),
            "optimizer": P("sgd", MMSELFSUP),
            # The benchmark sweeps lr in {0.1, 0.01, 0.001} and the head's lr multiplier in
            # {1, 10, 100} and reports the best; the preset starts at the grid's middle.
            "lr": P(0.01, f"{MMSELFSUP}: lr grid 0.1 / 0.01 / 0.001 (middle)"),
            "lr_scaling": P("none", MMSELFSUP),
            "head_lr_mult": P(10.0, f"{MMSELFSUP}: head lr x1 / x10 / x100 (middle)"),
            "momentum": P(0.9, MMSELFSUP),
            "weight_decay": P(5e-4, f"{MMSELFSUP}: weight decay 5e-4"),
            "schedule": P("step", MMSELFSUP),
            "milestones": P([12, 16], f"{MMSELFSUP}: lr x0.2 at epochs 12 and 16"),
            "gamma": P(0.2, MMSELFSUP),
            "zero_init_head": P(False, MMSELFSUP),
            "crop_scale_min": P(0.08, f"{MMSELFSUP}: RandomResizedCrop + flip"),
            "flip": P(True, MMSELFSUP),
            "subset_dir": P(None, "harness: a folder holding 1percent.txt / 10percent.txt; None = the copy shipped with the package (ImageNet)"),
        },
    }

    def subset(self, suite, train, percent: float, out_dir: Path) -> list[int]:
        """Indices into ``train`` (the full train split) of the labelled ``percent``%."""
        if getattr(suite, "name", "") == "imagenet":
            if percent not in (1, 10):
                raise UsageError(f"eval.semi_supervised.fractions: ImageNet has SimCLR lists for 1 and 10 %, not {percent}")
            d = self.params["subset_dir"]
            path = Path(d).expanduser() / f"{int(percent)}percent.txt" if d else None
            picked = select_listed(train.samples, simclr_subset(int(percent), path), train.classes)
        else:
            picked = balanced_subset(train.targets, float(percent), int(self.cfg["seed"]))
        root = Path(train.root)
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = [str(Path(train.samples[i][0]).relative_to(root)) for i in picked]
        (out_dir / f"subset_{percent:g}pct.txt").write_text("\n".join(lines) + "\n")
        return picked

    def run(self, method, suite, device, out_dir):
        p = self.params
        fractions, epochs = list(p["fractions"]), list(p["epochs"])
        if len(fractions) != len(epochs):
            raise UsageError(f"eval.semi_supervised.epochs={epochs}: expected one entry per fraction {fractions}")
        size = int(self.cfg["data.image_size"])
        train = suite.split("train")
        val = suite.split("val", eval_transform(size, self.cfg["data.eval_resize_ratio"]))
        metrics = {}
        for i, (percent, n_epochs) in enumerate(zip(fractions, epochs)):
            picked = self.subset(suite, train, percent, Path(out_dir))
            top1, top5 = self._finetune(method, train, picked, val, int(n_epochs), device, derive_seed(int(self.cfg["seed"]), 30, i), f"{percent:g}%")
            key = f"pct{percent:g}".replace(".", "_")
            metrics[f"{key}_top1"], metrics[f"{key}_top5"], metrics[f"{key}_images"] = top1, top5, float(len(picked))
        first = f"pct{fractions[0]:g}".replace(".", "_")
        metrics["top1"], metrics["top5"] = metrics[f"{first}_top1"], metrics[f"{first}_top5"]
        return metrics

    def _finetune(self, method, train, picked, val, n_epochs, device, seed, label) -> tuple[float, float]:
        p = self.params
        model = copy.deepcopy(method).to(device)  # the pretrained weights stay untouched for later evals
        torch.manual_seed(seed)
        head = nn.Linear(model.num_features, len(train.classes)).to(device)
        if p["zero_init_head"]:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        bs = int(p["batch_size"])
        lr = scale_lr(p["lr"], bs, p["lr_scaling"])
        groups = [{"params": [q for q in model.parameters() if q.requires_grad], "lr_scale": 1.0},
                  {"params": list(head.parameters()), "lr_scale": float(p["head_lr_mult"])}]
        for g in groups:
            g["lr"] = lr * g["lr_scale"]
        opt = build_optimizer(groups, {**p, "lr": lr})

        size = int(self.cfg["data.image_size"])
        data = SeededTransformDataset(train, crop_flip_transform(size, float(p["crop_scale_min"]), bool(p["flip"])), seed, indices=picked)
        steps_per_epoch = max(math.ceil(len(data) / bs), 1)
        total = n_epochs * steps_per_epoch
        schedule = lr_schedule({**p, "lr": lr, "epochs": n_epochs, "decay_epochs": p["milestones"]}, steps_per_epoch)
        model.train()
        step = 0
        bar = progress(total=total, desc=f"fine-tune {label}", unit="step")
        for epoch in range(n_epochs):
            data.set_epoch(epoch)
            for x, y in DataLoader(data, batch_size=bs, sampler=EpochSampler(len(data), seed, epoch)):
                for g in opt.param_groups:
                    g["lr"] = float(schedule[min(step, len(schedule) - 1)]) * g["lr_scale"]
                loss = F.cross_entropy(head(model.features(x.to(device))), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        model.eval()
        feats, labels = extract(model, val, device, 256, f"fine-tune {label}: val")
        with torch.no_grad():
            scores = head.eval()(feats.to(device)).cpu()
        correct = topk_correct(scores, labels, (1, 5))
        return 100.0 * correct[1] / len(labels), 100.0 * correct[5] / len(labels)

"""Linear probe on a frozen backbone (MoCo protocol by default)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness.backbones.readout import POOLINGS, PROBE_LAYERS, READOUTS, readout_features
from harness.config import P, each, integer, number, one_of
from harness.errors import UsageError
from harness.data.loading import EpochSampler, SeededTransformDataset
from harness.data.transforms import crop_flip_transform, eval_transform, resize_crop_transform
from harness.optim import build_optimizer, lr_schedule, scale_lr
from harness.progress import progress
from harness.seeding import derive_seed
from evals.base import Evaluator, top1, top5
from evals.features import topk_correct

MOCO = "facebookresearch/moco main_lincls.py"
SIMCLR = "google-research/simclr README (linear evaluation)"
DINO = "facebookresearch/dino eval_linear.py"
REVISITING = "google/revisiting-self-supervised config/evaluation/rotation_or_exemplar.sh, trainer.py, linear_eval.py"

IMAGENET_TRAIN, REVISITING_HOLDOUT = 1_281_167, 50_046
# Fixed, not the run seed: every run of a suite holds out the same images, so methods are
# selected on the same validation split.
HOLDOUT_SEED = 20190125


class BackboneChanged(AssertionError):
    pass


def state_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer (BN running stats included)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class LinearProbe(Evaluator):
    name = "linear"
    protocol = "linear"
    description = "linear classifier on frozen features (MoCo protocol: SGD lr 30, 100 epochs, steps at 60/80)"
    source = MOCO
    default_preset = "moco"
    metrics = (top1("val top-1 of the probe at the configured read-out (or the layer the hold-out picks)"), top5())
    headline = "top1"
    rules = {
        "epochs": integer(0), "batch_size": integer(1), "lr": number(0), "momentum": number(0),
        "weight_decay": number(0), "milestones": each(number(0)), "crop_scale_min": number(0, 1, lo_open=True),
        "flip": one_of(True, False), "feature_norm": one_of("none", "batchnorm"),
        "optimizer": one_of("sgd", "nesterov", "lars"), "lr_scaling": one_of("none", "linear"),
        "schedule": one_of("step", "cosine"), "readout": one_of(*READOUTS), "layers": each(one_of(*PROBE_LAYERS)),
        "pooling": one_of(*POOLINGS), "train_crop": one_of("random_resized", "resize_crop"),
        "holdout": number(0, 1, hi_open=True),
    }
    presets = {
        "moco": {
            "epochs": P(100, MOCO),
            "batch_size": P(256, MOCO),
            "lr": P(30.0, MOCO),
            "momentum": P(0.9, MOCO),
            "weight_decay": P(0.0, MOCO),
            "milestones": P([60, 80], f"{MOCO}: lr x0.1 at epochs 60 and 80"),
            "crop_scale_min": P(0.08, f"{MOCO}: RandomResizedCrop default scale"),
            "flip": P(True, MOCO),
            "feature_norm": P("none", f"{MOCO}: raw pooled features"),
            "optimizer": P("sgd", MOCO),
            "lr_scaling": P("none", f"{MOCO}: lr 30 at batch 256"),
            "schedule": P("step", MOCO),
            "readout": P("probe_layer", f"{MOCO}: the pooled backbone output"),
            "layers": P([], "harness: [] = one probe at the read-out; e.g. [block1, block2, block3, block4, pre_logits] trains one head per layer in one frozen pass"),
            "pooling": P("avg", "harness: stage maps average-pooled"),
            "train_crop": P("random_resized", f"{MOCO}: RandomResizedCrop + flip"),
            "holdout": P(0.0, f"{MOCO}: no validation split (the val set is reported)"),
        },
        "simclr": {
            "epochs": P(90, SIMCLR),
            "batch_size": P(4096, SIMCLR),
            "lr": P(0.1, f"{SIMCLR}: lr 0.1 x batch/256"),
            "lr_scaling": P("linear", SIMCLR),
            "momentum": P(0.9, SIMCLR),
            "optimizer": P("nesterov", f"{SIMCLR}: Nesterov momentum"),
            "weight_decay": P(1e-6, SIMCLR),
            "schedule": P("cosine", f"{SIMCLR}: cosine decay"),
            "milestones": P([], "unused by the cosine schedule"),
            "crop_scale_min": P(0.08, f"{SIMCLR}: random crop and flip"),
            "flip": P(True, SIMCLR),
            "feature_norm": P("none", SIMCLR),
            "readout": P("probe_layer", SIMCLR),
            "layers": P([], "harness: one probe at the read-out unless layers are listed"),
            "pooling": P("avg", "harness: stage maps average-pooled"),
            "train_crop": P("random_resized", SIMCLR),
            "holdout": P(0.0, f"{SIMCLR}: no validation split"),
        },
        "dino": {
            "epochs": P(100, DINO),
            "batch_size": P(1024, f"{DINO}: 128 per GPU x 8 GPUs"),
            "lr": P(0.001, f"{DINO}: lr 0.001 x batch/256"),
            "lr_scaling": P("linear", DINO),
            "momentum": P(0.9, DINO),
            "optimizer": P("sgd", DINO),
            "weight_decay": P(0.0, DINO),
            "schedule": P("cosine", f"{DINO}: CosineAnnealingLR to 0"),
            "milestones": P([], "unused by the cosine schedule"),
            "crop_scale_min": P(0.08, f"{DINO}: RandomResizedCrop + flip"),
            "flip": P(True, DINO),
            "feature_norm": P("none", DINO),
            "readout": P("dino", f"{DINO}: ViT-S concatenates the last 4 class tokens, ViT-B adds avgpool"),
            "layers": P([], "harness: one probe at the read-out unless layers are listed"),
            "pooling": P("avg", "harness: stage maps average-pooled"),
            "train_crop": P("random_resized", DINO),
            "holdout": P(0.0, f"{DINO}: no validation split"),
        },
        # Logistic regression on frozen (max-pooled) taps, Kolesnikov et al. 2019. The public
        # config's "reported results" variant: batch 2048, 520 epochs, decay at 480/500.
        "revisiting": {
            "epochs": P(70, f"{REVISITING}: --epochs 70"),
            "batch_size": P(512, f"{REVISITING}: --batch_size 512"),
            "lr": P(0.1, f"{REVISITING}: --lr 0.1 --lr_scale_batch_size 256"),
            "lr_scaling": P("linear", REVISITING),
            "momentum": P(0.9, f"{REVISITING}: MomentumOptimizer(momentum=0.9)"),
            "optimizer": P("sgd", REVISITING),
            "weight_decay": P(0.0, f"{REVISITING}: weight_decay flag unset (0)"),
            "schedule": P("step", REVISITING),
            "milestones": P([30, 50], f"{REVISITING}: --decay_epochs 30,50 (x0.1)"),
            "train_crop": P("resize_crop", f"{REVISITING}: --preprocessing resize_small,crop (256 -> 224)"),
            "crop_scale_min": P(1.0, "unused by resize_crop"),
            "flip": P(False, f"{REVISITING}: no flip in the preprocessing"),
            "feature_norm": P("none", REVISITING),
            "readout": P("probe_layer", REVISITING),
            "layers": P([], f"{REVISITING}: a head per tap; list them here (e.g. [block3, block4, pre_logits])"),
            "pooling": P("max9000", f"{REVISITING}: --pool_mode max, taps above 9,000 features pooled down"),
            # Their ImageNet 'train' split stops 50,046 images before the end of the (shuffled)
            # TFRecords, which become their validation split: the same share of any suite.
            "holdout": P(REVISITING_HOLDOUT / IMAGENET_TRAIN,
                         f"{REVISITING}: validation = the last 50,046 of 1,281,167 train images, test = official val"),
        },
    }

    def head_path(self, out_dir) -> Path:
        """Where the trained head is kept: the run's shared cache, so other evals that classify
        with this probe (robustness) reuse it instead of training it again. Named by the
        config hash, which covers the pretrained weights and every eval.linear value."""
        return self.feature_dir(out_dir) / f"linear-head-{self.cfg.hash[:16]}.pt"

    def trained_head(self, method, suite, device, out_dir):
        """(heads, read) of this probe: the saved head when this config trained one, else a
        new one trained (and saved). ``read`` maps images to each head's features."""
        path = self.head_path(out_dir)
        if path.is_file():
            head, read = self._build(method, len(suite.split("train").classes), device)
            head.load_state_dict(torch.load(path, map_location=device)["heads"])
            return head.eval(), read, True
        head, read, _, _ = self._train(method, suite, device, out_dir)
        self._save_head(head, out_dir)
        return head.eval(), read, False

    def _save_head(self, head, out_dir) -> None:
        from harness.checkpoint import save_atomic

        path = self.head_path(out_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic({"heads": head.state_dict(), "config_hash": self.cfg.hash, "preset": self.preset}, path)

    def _build(self, method, num_classes: int, device):
        """The heads (one per read-out layer), freshly initialised, and the frozen read-out."""
        p = self.params
        size = int(self.cfg["data.image_size"])
        readout = p["readout"]
        if readout not in READOUTS:
            raise UsageError(f"eval.linear.readout={readout!r}: expected one of {', '.join(READOUTS)}")
        layers = list(p["layers"])
        pool = p["pooling"]
        probe_layer = self.cfg.get("backbone.probe_layer", "pre_logits")

        def read(x: torch.Tensor) -> dict[str, torch.Tensor]:
            if not layers:
                if pool != "avg" and readout == "probe_layer" and probe_layer != "pre_logits":
                    return {"probe": method.represent_layers(x, [probe_layer], pool)[probe_layer]}
                return {"probe": readout_features(method, x, readout)}
            return method.represent_layers(x, layers, pool)

        with torch.no_grad():
            dims = {k: f.shape[1] for k, f in read(torch.zeros(2, 3, size, size, device=device)).items()}
        if p["feature_norm"] not in ("none", "batchnorm"):
            raise UsageError(f"eval.linear.feature_norm={p['feature_norm']!r}: expected 'none' or 'batchnorm'")
        torch.manual_seed(derive_seed(int(self.cfg["seed"]), 11))
        heads = nn.ModuleDict()
        for name, dim in dims.items():
            linear = nn.Linear(dim, num_classes)
            # MoCo initialises the probe with N(0, 0.01) weights and zero bias.
            nn.init.normal_(linear.weight, std=0.01)
            nn.init.zeros_(linear.bias)
            heads[name] = nn.Sequential(nn.BatchNorm1d(dim, affine=False), linear) if p["feature_norm"] == "batchnorm" else linear
        return heads.to(device), read

    def _train(self, method, suite, device, out_dir):
        """Trains the heads on the frozen ``method``: (heads, read, metrics so far, hold-out indices)."""
        p = self.params
        size = int(self.cfg["data.image_size"])
        seed = int(self.cfg["seed"])
        method.eval()  # BN running statistics are part of the frozen model (MoCo main_lincls)
        for q in method.parameters():
            q.requires_grad_(False)

        train_base = suite.split("train")
        fit, holdout = holdout_split(train_base, float(p["holdout"]), out_dir)
        if p["train_crop"] == "random_resized":
            train_tf = crop_flip_transform(size, p["crop_scale_min"], p["flip"])
        elif p["train_crop"] == "resize_crop":
            train_tf = resize_crop_transform(size, self.cfg["data.eval_resize_ratio"], p["flip"])
        else:
            raise UsageError(f"eval.linear.train_crop={p['train_crop']!r}: expected random_resized or resize_crop")
        train = SeededTransformDataset(train_base, train_tf, derive_seed(seed, 10), indices=fit)
        head, read = self._build(method, len(train_base.classes), device)
        bs = int(p["batch_size"])
        lr = scale_lr(p["lr"], bs, p["lr_scaling"])
        opt = build_optimizer(head.parameters(), {**p, "lr": lr})
        steps_per_epoch = max(len(train) // bs, 1)
        epochs = int(p["epochs"])
        schedule = lr_schedule({**p, "lr": lr, "decay_epochs": p["milestones"]}, steps_per_epoch)
        step = 0
        bar = progress(total=epochs * steps_per_epoch, desc="linear probe", unit="step")
        for epoch in range(epochs):
            train.set_epoch(epoch)
            loader = DataLoader(train, batch_size=bs, sampler=EpochSampler(len(train), derive_seed(seed, 12), epoch), drop_last=len(train) >= bs)
            for x, y in loader:
                for g in opt.param_groups:
                    g["lr"] = float(schedule[min(step, len(schedule) - 1)])
                with torch.no_grad():
                    feats = read(x.to(device))
                y = y.to(device)
                # One frozen pass feeds every layer's head; their losses are independent.
                loss = sum(F.cross_entropy(head[k](f.float()), y) for k, f in feats.items())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch, refresh=False)
        bar.close()

        for q in method.parameters():
            q.requires_grad_(True)
        return head, read, {"final_train_loss": float(loss.item())}, holdout

    def run(self, method, suite, device, out_dir):
        p = self.params
        size = int(self.cfg["data.image_size"])
        layers = list(p["layers"])
        probe_layer = self.cfg.get("backbone.probe_layer", "pre_logits")
        before = state_fingerprint(method)
        head, read, metrics, holdout = self._train(method, suite, device, out_dir)
        self._save_head(head, out_dir)

        head.eval()
        method.eval()
        eval_tf = eval_transform(size, self.cfg["data.eval_resize_ratio"])
        batch = min(int(p["batch_size"]), 256)
        if holdout:
            held = torch.utils.data.Subset(suite.split("train", eval_tf), holdout)
            metrics.update(_score(head, read, held, batch, device, "linear: validation", suffix="_holdout"))
        metrics.update(_score(head, read, suite.split("val", eval_tf), batch, device, "linear: val"))
        if state_fingerprint(method) != before:
            raise BackboneChanged("the linear probe changed the frozen backbone's weights or statistics")
        # The headline is the configured read-out's; with several layers, backbone.probe_layer's
        # head if it is among them, else the best layer's. With a validation split (Revisiting),
        # the layer the validation split ranks best, as that paper reports: the test set never
        # picks it.
        if layers:
            rank = "_holdout_top1" if holdout else "_top1"
            best = max(layers, key=lambda l: metrics[f"{l}{rank}"])
            metrics["best_layer"] = float(PROBE_LAYERS.index(best))  # an index: MLflow metrics are numbers
            key = best if holdout or probe_layer not in layers else probe_layer
        else:
            key = "probe"
        for part in ("top1", "top5", "holdout_top1", "holdout_top5"):
            if f"{key}_{part}" in metrics:
                metrics[part] = metrics[f"{key}_{part}"]
                if not layers:
                    del metrics[f"{key}_{part}"]
        return metrics


def holdout_split(train, fraction: float, out_dir) -> tuple[list[int], list[int]]:
    """(indices the probe trains on, indices of the validation split): ``fraction`` of the
    train split drawn with a fixed seed, its file list written to ``out_dir/holdout.txt``."""
    n = len(train.samples)
    if not 0 <= fraction < 1:
        raise UsageError(f"eval.linear.holdout={fraction}: expected a fraction in [0, 1)")
    if fraction == 0:
        return list(range(n)), []
    k = max(1, int(round(n * fraction)))
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    held = sorted(torch.randperm(n, generator=g)[:k].tolist())
    keep = set(held)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(train.root)
    (out / "holdout.txt").write_text("".join(f"{Path(train.samples[i][0]).relative_to(root)}\n" for i in held))
    return [i for i in range(n) if i not in keep], held


def _score(head, read, dataset, batch: int, device, desc: str, suffix: str = "") -> dict[str, float]:
    """Top-1/top-5 of every head on ``dataset``, keys ``<head><suffix>_top1`` / ``_top5``."""
    scores, labels = {k: [] for k in head}, []
    with torch.no_grad():
        for x, y in progress(DataLoader(dataset, batch_size=batch), desc=desc, unit="batch", leave=False):
            for k, f in read(x.to(device)).items():
                scores[k].append(head[k](f.float()).cpu())
            labels.append(torch.as_tensor(y))
    labels = torch.cat(labels)
    n = len(labels)
    out = {}
    for k, sc in scores.items():
        correct = topk_correct(torch.cat(sc), labels, (1, 5))
        out[f"{k}{suffix}_top1"], out[f"{k}{suffix}_top5"] = 100.0 * correct[1] / n, 100.0 * correct[5] / n
    return out

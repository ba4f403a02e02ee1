"""Linear probe on a frozen backbone (MoCo protocol by default)."""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness.config import P
from harness.errors import UsageError
from harness.data.loading import EpochSampler, SeededTransformDataset
from harness.data.transforms import crop_flip_transform, eval_transform
from harness.optim import step_decay
from harness.progress import progress
from harness.seeding import derive_seed
from evals.base import Evaluator
from evals.features import extract, topk_correct

MOCO = "facebookresearch/moco main_lincls.py"


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
        },
    }

    def run(self, method, suite, device, out_dir):
        p = self.params
        size = int(self.cfg["data.image_size"])
        seed = int(self.cfg["seed"])
        before = state_fingerprint(method)
        method.eval()  # BN running statistics are part of the frozen model (MoCo main_lincls)
        for q in method.parameters():
            q.requires_grad_(False)

        train_base = suite.split("train")
        train = SeededTransformDataset(train_base, crop_flip_transform(size, p["crop_scale_min"], p["flip"]), derive_seed(seed, 10))
        num_classes = len(train_base.classes)
        torch.manual_seed(derive_seed(seed, 11))
        linear = nn.Linear(method.num_features, num_classes)
        # MoCo initialises the probe with N(0, 0.01) weights and zero bias.
        nn.init.normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        if p["feature_norm"] == "batchnorm":
            head = nn.Sequential(nn.BatchNorm1d(method.num_features, affine=False), linear).to(device)
        elif p["feature_norm"] == "none":
            head = linear.to(device)
        else:
            raise UsageError(f"eval.linear.feature_norm={p['feature_norm']!r}: expected 'none' or 'batchnorm'")
        opt = torch.optim.SGD(head.parameters(), lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
        bs = int(p["batch_size"])
        steps_per_epoch = max(len(train) // bs, 1)
        epochs = int(p["epochs"])
        schedule = step_decay(float(p["lr"]), epochs * steps_per_epoch, [m * steps_per_epoch for m in p["milestones"]])
        step = 0
        bar = progress(total=epochs * steps_per_epoch, desc="linear probe", unit="step")
        for epoch in range(epochs):
            train.set_epoch(epoch)
            loader = DataLoader(train, batch_size=bs, sampler=EpochSampler(len(train), derive_seed(seed, 12), epoch), drop_last=len(train) >= bs)
            for x, y in loader:
                for g in opt.param_groups:
                    g["lr"] = float(schedule[min(step, len(schedule) - 1)])
                with torch.no_grad():
                    f = method.features(x.to(device))
                loss = F.cross_entropy(head(f.float()), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch, refresh=False)
        bar.close()

        head.eval()
        val = suite.split("val", eval_transform(size, self.cfg["data.eval_resize_ratio"]))
        feats, labels = extract(method, val, device, bs, "linear: val")
        with torch.no_grad():
            scores = head(feats.to(device)).cpu()
        correct = topk_correct(scores, labels, (1, 5))
        if state_fingerprint(method) != before:
            raise BackboneChanged("the linear probe changed the frozen backbone's weights or statistics")
        for q in method.parameters():
            q.requires_grad_(True)
        n = len(labels)
        return {"top1": 100.0 * correct[1] / n, "top5": 100.0 * correct[5] / n, "final_train_loss": float(loss.item())}

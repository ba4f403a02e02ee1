"""A fast linear probe: many heads (a learning-rate sweep) on features extracted once.

No augmentation and a chosen learning rate make it a different protocol from the standard
probes, so it is reported under its own protocol name (``linear_fast``), never in the
``linear`` column. The features are the run's shared cache (the same ones kNN reads). The
learning rate is chosen on a seeded hold-out of the train split, then that head is scored
on val: choosing on val would flatter every method.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.config import P, each, integer, number, one_of
from harness.data.transforms import eval_transform
from harness.errors import UsageError
from harness.optim import warmup_cosine
from harness.progress import progress
from harness.seeding import derive_seed
from evals.base import Evaluator, top1, top5
from evals.features import cached_features, FeatureCache, topk_correct

HARNESS = "harness protocol (fast sweep on cached features; not comparable with the linear column)"


class FastLinear(Evaluator):
    name = "linear_fast"
    protocol = "linear_fast"
    description = "lr sweep of linear heads on cached, unaugmented features (lr chosen on a train hold-out)"
    source = HARNESS
    default_preset = "sweep"
    metrics = (top1("val top-1 of the head whose lr the train hold-out chose"), top5())
    headline = "top1"
    rules = {"lrs": each(number(0, lo_open=True)), "epochs": integer(0), "batch_size": integer(1),
             "momentum": number(0), "weight_decay": number(0), "holdout": number(0, 1, lo_open=True, hi_open=True),
             "standardize": one_of(True, False), "chunk_size": integer(1)}
    presets = {
        "sweep": {
            "lrs": P([0.01, 0.03, 0.1, 0.3, 1.0, 3.0], f"{HARNESS}: half-decade grid"),
            "epochs": P(30, HARNESS),
            "batch_size": P(256, HARNESS),
            "momentum": P(0.9, HARNESS),
            "weight_decay": P(0.0, HARNESS),
            "holdout": P(0.1, f"{HARNESS}: fraction of train used to choose the lr"),
            "standardize": P(True, f"{HARNESS}: per-dimension mean/std from the train features"),
            "chunk_size": P(65536, "harness choice: rows read from the cache at once for statistics"),
        },
    }

    def run(self, method, suite, device, out_dir):
        p = self.params
        tf = eval_transform(self.cfg["data.image_size"], self.cfg["data.eval_resize_ratio"])
        train, val = suite.split("train", tf), suite.split("val", tf)
        cache = FeatureCache(self.cfg, self.feature_dir(out_dir))
        ftr, ytr = cached_features(method, train, device, cache.dir, cache.key("train"), 256, "linear_fast: train features")
        fva, yva = cached_features(method, val, device, cache.dir, cache.key("val"), 256, "linear_fast: val features")
        n, dim = ftr.shape
        if not 0 < float(p["holdout"]) < 1:
            raise UsageError(f"eval.linear_fast.holdout={p['holdout']}: expected a fraction in (0, 1)")
        g = torch.Generator().manual_seed(derive_seed(int(self.cfg["seed"]), 40))
        perm = torch.randperm(n, generator=g).numpy()
        n_hold = max(1, int(round(n * float(p["holdout"]))))
        hold, fit = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
        mean, std = self._stats(ftr, fit) if p["standardize"] else (torch.zeros(dim), torch.ones(dim))

        def rows(feats, idx):
            return (torch.from_numpy(np.asarray(feats[idx])).float() - mean) / std

        classes = len(train.classes)
        lrs = [float(lr) for lr in p["lrs"]]
        heads = [self._fit(ftr, ytr, fit, rows, lr, classes, device, g) for lr in lrs]
        metrics = {}
        hold_x, hold_y = rows(ftr, hold).to(device), ytr[hold]
        for lr, head in zip(lrs, heads):
            with torch.no_grad():
                metrics[f"lr{lr:g}_holdout_top1"] = 100.0 * topk_correct(head(hold_x).cpu(), hold_y, (1,))[1] / len(hold)
        best = max(range(len(lrs)), key=lambda i: metrics[f"lr{lrs[i]:g}_holdout_top1"])
        with torch.no_grad():
            scores = heads[best](rows(fva, np.arange(len(fva))).to(device)).cpu()
        correct = topk_correct(scores, yva, (1, 5))
        metrics.update({"top1": 100.0 * correct[1] / len(yva), "top5": 100.0 * correct[5] / len(yva), "best_lr": lrs[best]})
        return metrics

    def _stats(self, feats, idx) -> tuple[torch.Tensor, torch.Tensor]:
        total, sq, count = None, None, 0
        step = int(self.params["chunk_size"])
        for a in range(0, len(idx), step):
            x = torch.from_numpy(np.asarray(feats[idx[a:a + step]])).double()
            total = x.sum(0) if total is None else total + x.sum(0)
            sq = (x * x).sum(0) if sq is None else sq + (x * x).sum(0)
            count += len(x)
        mean = total / count
        std = (sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
        return mean.float(), std.float()

    def _fit(self, feats, labels, idx, rows, lr, classes, device, g) -> torch.nn.Linear:
        p = self.params
        head = torch.nn.Linear(feats.shape[1], classes).to(device)
        torch.nn.init.normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=float(p["momentum"]), weight_decay=float(p["weight_decay"]))
        bs, epochs = int(p["batch_size"]), int(p["epochs"])
        steps = max(len(idx) // bs, 1)
        schedule = warmup_cosine(lr, epochs * steps)
        step = 0
        for _ in progress(range(epochs), desc=f"linear_fast lr {lr:g}", unit="epoch", leave=False):
            order = idx[torch.randperm(len(idx), generator=g).numpy()]
            for b in range(steps):
                batch = np.sort(order[b * bs:(b + 1) * bs])  # sorted reads from the memory map
                for group in opt.param_groups:
                    group["lr"] = float(schedule[step])
                loss = F.cross_entropy(head(rows(feats, batch).to(device)), labels[batch].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
        return head.eval()

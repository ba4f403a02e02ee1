"""Linear SVMs on frozen features: the low-shot / VOC07 protocol of Goyal, Mahajan, Gupta &
Misra, "Scaling and Benchmarking Self-Supervised Visual Representation Learning", ICCV 2019.

    f = normalize(features(x))                   # frozen, L2-normalised
    for C in costs: score(C) = k-fold CV accuracy of one-vs-rest LinearSVC(C) on train
    fit LinearSVC(argmax score) on all of train; report val top-1

An eval plugin: it imports only the public API (``ssl_harness``) and scikit-learn, and
registers through the ``harness.evals`` entry point.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ssl_harness import CLASSIFICATION, Evaluator, P, eval_transform, top1

GOYAL = "Goyal et al. 2019, Sec. 5 / fair_self_supervision_benchmark svm configs"


class LinearSVM(Evaluator):
    name = "svm"
    protocol = "svm"
    description = "one-vs-rest linear SVMs on frozen L2-normalised features, cost chosen by k-fold CV on train"
    source = GOYAL
    default_preset = "goyal2019"
    metrics = (top1("val top-1 of the SVMs at the cost cross-validation chose"),)
    headline = "top1"
    needs = (CLASSIFICATION,)
    presets = {
        "goyal2019": {
            "costs": P([0.01, 0.1, 1.0, 10.0], f"{GOYAL}: a cost sweep (theirs spans 1e-7 to 1e3)"),
            "folds": P(3, f"{GOYAL}: 3-fold cross-validation"),
            "batch_size": P(256, "harness: feature extraction batch"),
        },
    }

    def run(self, method, suite, device, out_dir):
        from sklearn.model_selection import cross_val_score
        from sklearn.svm import LinearSVC

        p = self.params
        tf = eval_transform(int(self.cfg["data.image_size"]), self.cfg["data.eval_resize_ratio"])
        method.eval()
        train_x, train_y = _features(method, suite.split("train", tf), device, int(p["batch_size"]))
        val_x, val_y = _features(method, suite.split("val", tf), device, int(p["batch_size"]))
        seed = int(self.cfg["seed"])
        scores = {c: cross_val_score(LinearSVC(C=c, random_state=seed), train_x, train_y, cv=int(p["folds"])).mean()
                  for c in p["costs"]}
        best = max(scores, key=scores.get)
        svm = LinearSVC(C=best, random_state=seed).fit(train_x, train_y)
        out = {"top1": 100.0 * float((svm.predict(val_x) == val_y).mean()), "cost": float(best)}
        out.update({f"cv_top1_C{c:g}": 100.0 * float(s) for c, s in scores.items()})
        return out


def _features(method, dataset, device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    feats, labels = [], []
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size):
            feats.append(torch.nn.functional.normalize(method.features(x.to(device)).float(), dim=1).cpu())
            labels.append(torch.as_tensor(y))
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()

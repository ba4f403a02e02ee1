"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.config import P, each, integer, number
from harness.data.transforms import eval_transform
from evals.base import Evaluator, top1, top5
from evals.features import cached_features, FeatureCache

DINO_KNN = "facebookresearch/dino eval_knn.py"
VISSL_KNN = "facebookresearch/vissl configs/config/defaults.yaml (NPID kNN: k=200, T=0.1)"


def _rows(feats, a: int, b: int) -> torch.Tensor:
    """Rows a:b as a float tensor; a (read-only) memory map is copied block by block."""
    if isinstance(feats, torch.Tensor):
        return feats[a:b].float()
    return torch.from_numpy(np.array(feats[a:b], dtype=np.float32))


@torch.no_grad()
def knn_predict(train_feats, train_labels: torch.Tensor, test_feats, ks: list[int], temperature: float,
                num_classes: int, chunk_size: int = 1024, train_chunk_size: int = 65536) -> dict[int, torch.Tensor]:
    """Class scores [N_test, C] for each k: cosine top-k votes weighted by exp(sim / T).

    Features (tensors, or NumPy arrays such as the on-disk feature cache's memory maps) are
    L2-normalised here, a block at a time: at most ``chunk_size`` test rows and
    ``train_chunk_size`` train rows are in memory at once, and a running top-k is merged
    across train blocks, so 1.28M x 2048 ImageNet features never have to fit in memory.
    """
    n_train, n_test = len(train_feats), len(test_feats)
    kmax = min(max(ks), n_train)
    train_labels = torch.as_tensor(train_labels)
    out = {k: [] for k in ks}
    train_blocks = [(s, min(s + train_chunk_size, n_train)) for s in range(0, n_train, train_chunk_size)]
    cached = [F.normalize(_rows(train_feats, a, b), dim=1) for a, b in train_blocks] \
        if len(train_blocks) == 1 else None  # one block: normalise once, not per test chunk
    for start in range(0, n_test, chunk_size):
        test = F.normalize(_rows(test_feats, start, start + chunk_size), dim=1)
        best_sim = torch.full((len(test), 0), float("-inf"))
        best_idx = torch.zeros((len(test), 0), dtype=torch.long)
        for j, (a, b) in enumerate(train_blocks):
            train = cached[j] if cached else F.normalize(_rows(train_feats, a, b), dim=1)
            sim = test @ train.t()
            top_sim, top_idx = sim.topk(min(kmax, b - a), dim=1)
            best_sim, order = torch.cat([best_sim, top_sim], 1).topk(min(kmax, best_sim.shape[1] + top_sim.shape[1]), dim=1)
            best_idx = torch.cat([best_idx, top_idx + a], 1).gather(1, order)
        weights = (best_sim / temperature).exp()
        onehot = F.one_hot(train_labels[best_idx], num_classes).float()  # [n, kmax, C]
        for k in ks:
            kk = min(k, kmax)
            out[k].append((onehot[:, :kk] * weights[:, :kk, None]).sum(dim=1))
    return {k: torch.cat(v) for k, v in out.items()}


def knn_topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) from kNN class scores. A class no neighbour voted for
    is never a prediction: with k < 5 at most k classes have votes, and counting the
    arbitrary order of zero-score classes as "top-5" would inflate it."""
    top_scores, top = scores.topk(min(5, scores.shape[1]), dim=1)
    hit = (top == labels[:, None]) & (top_scores > 0)
    n = len(labels)
    return 100.0 * hit[:, 0].sum().item() / n, 100.0 * hit.any(dim=1).sum().item() / n


class KNN(Evaluator):
    name = "knn"
    protocol = "knn"
    description = "weighted kNN on L2-normalised frozen features (DINO protocol: T=0.07, k=10/20/100/200)"
    source = DINO_KNN
    default_preset = "dino"
    metrics = (top1("top-1 of the weighted vote of the eval.knn.k nearest neighbours"),
               top5("top-5 of the same vote (only classes some neighbour voted for)"))
    headline = "top1"
    rules = {"ks": each(integer(1)), "k": integer(1), "temperature": number(0, lo_open=True),
             "chunk_size": integer(1), "batch_size": integer(1)}
    presets = {
        "dino": {
            "ks": P([10, 20, 100, 200], DINO_KNN),
            "k": P(20, f"{DINO_KNN}: headline k"),
            "temperature": P(0.07, DINO_KNN),
            "chunk_size": P(1024, "harness choice: bounds memory to chunk x N_train"),
            "batch_size": P(256, "harness choice (feature extraction only)"),
        },
        # InstDisc / NPID's protocol as VISSL runs it (Wu et al. 2018, Sec. 3.4: k=200, T=0.1).
        "npid": {
            "ks": P([200], VISSL_KNN),
            "k": P(200, VISSL_KNN),
            "temperature": P(0.1, VISSL_KNN),
            "chunk_size": P(1024, "harness choice: bounds memory to chunk x N_train"),
            "batch_size": P(256, "harness choice (feature extraction only)"),
        },
    }

    def run(self, method, suite, device, out_dir):
        p = self.params
        size = self.cfg["data.image_size"]
        tf = eval_transform(size, self.cfg["data.eval_resize_ratio"])
        train = suite.split("train", tf)
        val = suite.split("val", tf)
        cache = FeatureCache(self.cfg, self.feature_dir(out_dir))
        ftr, ytr = cached_features(method, train, device, cache.dir, cache.key("train"), p["batch_size"], "knn: train features")
        fte, yte = cached_features(method, val, device, cache.dir, cache.key("val"), p["batch_size"], "knn: val features")
        ks = sorted(set(int(k) for k in p["ks"]) | {int(p["k"])})
        scores = knn_predict(ftr, ytr, fte, ks, float(p["temperature"]), len(train.classes), int(p["chunk_size"]))
        metrics = {}
        for k, s in scores.items():
            top1, top5 = knn_topk_accuracy(s, yte)
            metrics[f"k{k}_top1"] = top1
            metrics[f"k{k}_top5"] = top5
        metrics["top1"] = metrics[f"k{int(p['k'])}_top1"]
        metrics["top5"] = metrics[f"k{int(p['k'])}_top5"]
        return metrics

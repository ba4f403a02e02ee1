"""Frozen-feature extraction shared by the kNN and linear evaluations."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from harness.progress import progress


@torch.no_grad()
def _feature_batches(method, dataset, device, batch_size, desc, num_workers=0, features=None):
    """(features [B, D] float32 on CPU, labels [B]) batch by batch, in dataset order, with the
    method in eval mode (restored afterwards)."""
    features = features or method.features
    was_training = method.training
    method.eval()
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for x, y in progress(loader, desc=desc, unit="batch", leave=False):
            yield features(x.to(device)).float().cpu(), torch.as_tensor(y)
    finally:
        method.train(was_training)


def extract(method, dataset, device: torch.device, batch_size: int = 256, desc: str = "features", num_workers: int = 0,
            features=None):
    """Returns (features [N, D] float32 on CPU, labels [N] long) in dataset order;
    ``features`` (images -> [B, D]) replaces ``method.features``."""
    feats, labels = zip(*_feature_batches(method, dataset, device, batch_size, desc, num_workers, features))
    return torch.cat(feats), torch.cat(labels)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the top-k scores, for each k."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return {k: int(hit[:, :k].any(dim=1).sum()) for k in ks}


def cached_features(method, dataset, device: torch.device, cache_dir, key: dict, batch_size: int = 256, desc: str = "features"):
    """Features of ``dataset`` under the frozen ``method``, extracted once per run directory
    and shared by every evaluation that reads the same images the same way (kNN, the fast
    linear sweep). ``key`` names what they depend on (split, transform, probe layer, config
    hash). Written block by block into a memory-mapped ``.npy``, so 1.28M x 2048 ImageNet
    features never sit in memory; returns (features as a read-only memory map, labels)."""
    import hashlib
    import json
    import os
    from pathlib import Path

    import numpy as np

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    feats_path, labels_path = cache_dir / f"{name}.npy", cache_dir / f"{name}.labels.npy"
    if not (feats_path.exists() and labels_path.exists()):
        tmp = cache_dir / f".{name}.{os.getpid()}.npy"
        out, labels, row = None, [], 0
        for f, y in _feature_batches(method, dataset, device, batch_size, desc):
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(dataset), f.shape[1]))
            out[row:row + len(f)] = f.numpy()
            row += len(f)
            labels.append(y.numpy())
        out.flush()
        del out
        np.save(labels_path, np.concatenate(labels).astype(np.int64))
        os.replace(tmp, feats_path)  # last: its presence marks the cache complete
        (cache_dir / f"{name}.json").write_text(json.dumps(key, sort_keys=True, default=str, indent=1))
    return np.load(feats_path, mmap_mode="r"), torch.from_numpy(np.load(labels_path))


class FeatureCache:
    """A feature cache folder (the run folder's shared one, given to every eval) and what its
    entries depend on: the eval transform, the read-out layer, the training subset and the
    resolved config (so the pretrained weights)."""

    def __init__(self, cfg, directory):
        from pathlib import Path

        self.dir = Path(directory)
        self.base = {"config_hash": cfg.hash, "image_size": cfg["data.image_size"],
                     "eval_resize_ratio": cfg["data.eval_resize_ratio"], "probe_layer": cfg.get("backbone.probe_layer", "pre_logits"),
                     "train_subset": cfg["data.train_subset"], "transform": "eval"}

    def key(self, split: str) -> dict:
        return {**self.base, "split": split}

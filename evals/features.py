"""Frozen-feature extraction shared by the kNN and linear evaluations."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from harness.progress import progress


@torch.no_grad()
def extract(method, dataset, device: torch.device, batch_size: int = 256, desc: str = "features", num_workers: int = 0,
            features=None):
    """Returns (features [N, D] float32 on CPU, labels [N] long) in dataset order;
    ``features`` (images -> [B, D]) replaces ``method.features``."""
    features = features or method.features
    was_training = method.training
    method.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, labels = [], []
    for x, y in progress(loader, desc=desc, unit="batch", leave=False):
        feats.append(features(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    method.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the top-k scores, for each k."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return {k: int(hit[:, :k].any(dim=1).sum()) for k in ks}

"""Objectives as standalone functions of tensors (see DESIGN.md's table of public names)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cpc_loss(predictions: torch.Tensor, targets: torch.Tensor, positives: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE over predicted patch embeddings (van den Oord et al. 2018; Hénaff et al. 2019).

    predictions: [N, D], one predicted embedding per (context position, prediction step).
    targets: [M, D], the embeddings of every patch in the batch; each prediction is scored
        against all of them, so the negatives are every other patch of every image.
    positives: [N] long, the row of ``targets`` that each prediction should pick out.
    Returns the mean over the N predictions of -log softmax(predictions @ targets.T / t)[positive].
    """
    if predictions.ndim != 2 or targets.ndim != 2 or predictions.shape[1] != targets.shape[1]:
        raise ValueError(f"expected predictions [N, D] and targets [M, D], got {tuple(predictions.shape)} and {tuple(targets.shape)}")
    logits = predictions @ targets.t() / temperature
    return F.cross_entropy(logits, positives)

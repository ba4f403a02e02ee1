"""Momentum (EMA) encoders and the per-step schedules that drive them.

Schedules are precomputed arrays indexed by the global step, like the learning rate: a
resumed run reads the value of its step without replaying anything.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn


def momentum_copy(online: nn.Module) -> nn.Module:
    """A frozen copy of ``online`` to serve as its EMA target (MoCo's key encoder, BYOL's
    target, DINO's teacher): same initial weights, no gradients."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    """target <- m * target + (1 - m) * online, parameter by parameter; buffers (BN running
    statistics) are copied. With ``copy_buffers=False`` the target keeps buffers of its
    own: DINO's official loop (main_dino.py ``train_one_epoch``) averages parameters only,
    so its teacher's BN statistics come from the teacher's own passes over the global crops."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    if copy_buffers:
        for t, o in zip(target.buffers(), online.buffers()):
            t.copy_(o)


def cosine_increase(base: float, final: float, total_steps: int) -> np.ndarray:
    """From ``base`` at step 0 to ``final`` at the last step along a half cosine: BYOL's
    target momentum tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2 (Grill et al. 2020,
    Sec. 3.2), also DINO's teacher momentum 0.996 -> 1 and weight-decay schedule."""
    total_steps = max(int(total_steps), 1)
    k = np.arange(total_steps)
    return final - (final - base) * (np.cos(math.pi * k / total_steps) + 1) / 2


def warmup_constant(start: float, end: float, warmup_steps: int, total_steps: int) -> np.ndarray:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (DINO's teacher
    temperature: 0.04 -> 0.07 over the first 30 epochs, Caron et al. 2021, App.)."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(int(warmup_steps), total_steps)
    out = np.full(total_steps, float(end))
    out[:warmup_steps] = np.linspace(start, end, warmup_steps, endpoint=False) if warmup_steps else []
    return out

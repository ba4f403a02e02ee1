"""Optimizers and per-step schedules.

Schedules are precomputed arrays indexed by the global step (as in MoCo v3 and DINO), so
the value at any step is known without replaying the run: resume is just an index.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from harness.errors import UsageError


def warmup_cosine(base: float, total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> np.ndarray:
    """Linear warmup from 0 to ``base`` over ``warmup_steps``, then cosine decay to ``final``."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(int(warmup_steps), total_steps)
    warm = np.linspace(0.0, base, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    n = total_steps - warmup_steps
    t = np.arange(n) / max(n, 1)
    cos = final + 0.5 * (base - final) * (1 + np.cos(math.pi * t))
    return np.concatenate([warm, cos])


def step_decay(base: float, total_steps: int, milestones: list[int], gamma: float = 0.1) -> np.ndarray:
    """Piecewise constant: ``base * gamma**k`` after the k-th milestone step (MoCo linear probe)."""
    steps = np.arange(max(int(total_steps), 1))
    k = np.searchsorted(np.asarray(sorted(milestones)), steps, side="right")
    return base * gamma ** k


SCHEDULES = ("cosine", "step")


def lr_schedule(train: dict, steps_per_epoch: int) -> np.ndarray:
    """The per-step learning rate of a ``train`` config section (or an eval's section in the
    same words): linear warmup over ``warmup_epochs`` (default 0), then cosine decay to
    ``min_lr_ratio`` x lr (``schedule=cosine``) or x``gamma`` (default 0.1) at each of
    ``decay_epochs`` (``step``: the Revisiting SSL schedule, MoCo's linear probe)."""
    total = int(train["epochs"]) * steps_per_epoch
    base = float(train["lr"])
    warmup = min(int(round(float(train.get("warmup_epochs", 0)) * steps_per_epoch)), max(total, 1))
    kind = train.get("schedule", "cosine")
    if kind == "cosine":
        return warmup_cosine(base, total, warmup, base * float(train.get("min_lr_ratio", 0.0)))
    if kind == "step":
        sched = step_decay(base, total, [int(e * steps_per_epoch) for e in train.get("decay_epochs") or []],
                           float(train.get("gamma", 0.1)))
        sched[:warmup] = np.linspace(0.0, base, warmup, endpoint=False)
        return sched
    raise UsageError(f"train.schedule={kind!r}: expected one of {', '.join(SCHEDULES)}")


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by SimCLR and BYOL.

    Parameters with ``ndim <= 1`` (biases, norm scales) get neither weight decay nor the
    trust ratio, following the SimCLR reference implementation.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.norm(p), torch.norm(d)
                    trust = torch.where(
                        (w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm, torch.ones_like(w_norm)
                    )
                    d = d.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss


OPTIMIZERS = ("sgd", "nesterov", "lars", "adamw")
LR_SCALINGS = ("none", "linear", "sqrt")


def scale_lr(lr: float, batch_size: int, rule: str) -> float:
    """``lr`` for ``batch_size`` under a published scaling rule: ``none``; ``linear``
    (lr x batch/256, Goyal et al. 2017); ``sqrt`` (lr x sqrt(batch), SimCLR's
    --learning_rate_scaling=sqrt)."""
    if rule == "none":
        return float(lr)
    if rule == "linear":
        return float(lr) * (batch_size / 256)
    if rule == "sqrt":
        return float(lr) * math.sqrt(batch_size)
    raise UsageError(f"lr scaling {rule!r}: expected one of {', '.join(LR_SCALINGS)}")


def build_optimizer(params, train: dict) -> torch.optim.Optimizer:
    """The optimizer of a ``train`` config section (or an eval's section in the same words):
    ``sgd`` (Nesterov when ``nesterov`` is set), ``nesterov``, ``lars`` or ``adamw``."""
    name = str(train["optimizer"]).lower()
    if name in ("sgd", "nesterov"):
        return torch.optim.SGD(
            params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"],
            nesterov=(name == "nesterov" or bool(train.get("nesterov", False))) and train["momentum"] > 0,
        )
    if name == "lars":
        return LARS(params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"],
                    eta=train.get("lars_eta", 0.001))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], betas=tuple(train["betas"]), weight_decay=train["weight_decay"])
    raise UsageError(f"train.optimizer={name!r}: expected one of {', '.join(OPTIMIZERS)}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float, base_lr: float) -> None:
    """The scheduled ``lr`` on every group, except groups marked ``fixed_lr``, which stay at
    ``base_lr`` (``train.lr``) for the whole run, as SimSiam's ``--fix-pred-lr`` does."""
    for group in optimizer.param_groups:
        current = base_lr if group.get("fixed_lr") else lr
        group["lr"] = current * group.get("lr_scale", 1.0)


def param_groups_no_decay(model: nn.Module, weight_decay: float, fixed_lr=()) -> list[dict]:
    """Biases and norm parameters are excluded from weight decay (common SSL practice).

    Parameters in ``fixed_lr`` go into their own groups, marked so that ``set_lr`` keeps them
    at the base learning rate instead of the schedule.
    """
    fixed_ids = {id(p) for p in fixed_lr}
    groups = []
    for fixed in (False, True):
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad and (id(p) in fixed_ids) == fixed:
                (no_decay if p.ndim <= 1 else decay).append(p)
        if fixed and not decay and not no_decay:
            continue
        extra = {"fixed_lr": True} if fixed else {}
        groups += [
            {"params": decay, "weight_decay": weight_decay, **extra},
            {"params": no_decay, "weight_decay": 0.0, **extra},
        ]
    return groups

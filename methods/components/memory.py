"""Negative stores held in module buffers, so checkpoints carry them and a resumed run
equals an uninterrupted one: MoCo's key queue and InstDisc/PIRL's memory bank."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


class Queue(nn.Module):
    """A FIFO of ``size`` L2-normalised keys of dimension ``dim`` (He et al. 2020, Sec. 3.2),
    initialised with random unit vectors like MoCo's official builder.py."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest ``len(keys)`` entries (keys gathered from every rank first)."""
        n, size = keys.shape[0], len(self)
        if size % n:
            raise ValueError(f"queue size {size} is not a multiple of the keys per step {n} (MoCo requires it)")
        p = int(self.ptr)
        self.keys[p:p + n] = keys.detach().to(self.keys.dtype)
        self.ptr.fill_((p + n) % size)


class MemoryBank(nn.Module):
    """One L2-normalised feature per training image (Wu et al. 2018, Sec. 3.1-3.2).

    Entries start uniform in [-a, a], a = 1/sqrt(dim/3) (official lemniscate code), and are
    updated as v_i <- normalise(m * v_i + (1 - m) * f_i) for the images of each step.
    The number of images is known only once the data is: ``allocate(n)`` sizes the bank
    (from ``Method.prepare``), and loading a checkpoint takes the saved size.
    """

    def __init__(self, dim: int, n_data: int = 0):
        super().__init__()
        self.dim = dim
        self.register_buffer("bank", torch.zeros(0, dim))
        if n_data:
            self.allocate(n_data)

    def allocate(self, n_data: int) -> None:
        a = 1.0 / math.sqrt(self.dim / 3)
        self.bank = torch.rand(n_data, self.dim, device=self.bank.device).mul_(2 * a).add_(-a)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "bank")
        if saved is not None and saved.shape != self.bank.shape:
            self.bank = torch.empty_like(saved, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __len__(self) -> int:
        return self.bank.shape[0]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
        mixed = self.bank[indices] * momentum + features.detach().to(self.bank.dtype) * (1 - momentum)
        self.bank[indices] = F.normalize(mixed, dim=1)

    @torch.no_grad()
    def sample(self, batch: int, k: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` uniformly drawn entries per row (from torch's seeded global generator):
        (indices [batch, k], features [batch, k, dim])."""
        if not len(self):
            raise RuntimeError("memory bank not allocated: call allocate(n_data) before training")
        idx = torch.randint(len(self), (batch, k), device=self.bank.device)
        return idx, self.bank[idx]


@contextlib.contextmanager
def bn_stats_kept(module: nn.Module):
    """BatchNorm running statistics of ``module`` restored on exit: a pass over the data to
    warm a queue or bank (in train mode, with batch statistics, as training computes its
    features) leaves the model exactly as it was."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def data_batches(dataset, batch_size: int, device, drop_last: bool = False):
    """The dataset in order, collated and moved to ``device`` (for warm starts in ``prepare``)."""
    from torch.utils.data import DataLoader

    def move(b):
        if isinstance(b, torch.Tensor):
            return b.to(device)
        return type(b)(move(x) for x in b) if isinstance(b, (list, tuple)) else b

    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last):
        yield move(batch)

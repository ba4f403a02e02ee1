"""Reproducible data loading: sample order and augmentations as pure functions of the seed.

The order of epoch ``e`` is a permutation drawn from (seed, e), and each sample's
augmentation from (seed, e, index). Neither depends on the number of loader workers, nor on
where a resumed run restarts, which is what makes a resumed run equal an uninterrupted one.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from harness.seeding import derive_seed


class EpochSampler(Sampler[int]):
    """A seeded permutation for one epoch, starting at ``start`` (for mid-epoch resume)."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, shuffle: bool = True):
        self.n, self.seed, self.epoch, self.start, self.shuffle = n, seed, epoch, start, shuffle

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(derive_seed(self.seed, 1, self.epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        return iter(self.order()[self.start:].tolist())

    def __len__(self) -> int:
        return self.n - self.start


class RankSliceSampler(Sampler[int]):
    """Process ``rank``'s share of an ``EpochSampler`` under data parallelism: of every
    global batch of ``global_batch`` consecutive indices, the ``rank``-th of ``world``
    equal slices. The W processes together see exactly the single-process batches, each
    sample with the same seeded augmentation (it depends on the sample, not the process)."""

    def __init__(self, base: EpochSampler, global_batch: int, rank: int, world: int):
        self.base, self.global_batch, self.rank, self.world = base, global_batch, rank, world
        self.local = global_batch // world

    def _indices(self) -> torch.Tensor:
        order = self.base.order()[self.base.start:]
        full = len(order) // self.global_batch * self.global_batch  # drop_last, globally
        return order[:full].view(-1, self.world, self.local)[:, self.rank].reshape(-1)

    def __iter__(self):
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return len(self._indices())


class SeededTransformDataset(Dataset):
    """Applies ``transform`` to ``base[i]``'s image under an RNG seeded by (seed, epoch, i).
    With ``with_index`` a sample is (views, label, i): memory-bank methods (InstDisc, PIRL)
    need to know which image each row of a batch is."""

    def __init__(self, base, transform, seed: int, indices: list[int] | None = None, with_index: bool = False):
        self.base, self.transform, self.seed, self.with_index = base, transform, seed, with_index
        self.indices = indices if indices is not None else list(range(len(base)))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.base[self.indices[i]]
        # fork_rng keeps the seeding local: the trainer's own RNG stream is untouched when
        # samples are loaded in the main process (num_workers=0).
        # Transforms run on the CPU, so only the CPU generator is seeded: torch.manual_seed
        # would also queue a lazy CUDA seeding that records a stack trace, 2 ms a sample.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derive_seed(self.seed, 2, self.epoch, self.indices[i]))
            sample = self.transform(img)
        return (sample, label, i) if self.with_index else (sample, label)


def subset_indices(n: int, limit: int, seed: int = 0) -> list[int]:
    """``limit`` indices of ``n`` chosen by a fixed permutation (all of them when limit <= 0)."""
    if limit <= 0 or limit >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(derive_seed(seed, 3))
    return sorted(torch.randperm(n, generator=g)[:limit].tolist())

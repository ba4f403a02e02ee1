"""Collectives for data-parallel losses, as the official codes of SimCLR, MoCo, SwAV and
Barlow Twins use them. Every helper is the identity (or its obvious single-process
counterpart) when ``torch.distributed`` is not initialised or the group has one process,
so a loss written with them runs unchanged in a single process.

Gradient convention. ``gather_with_grad`` and ``all_reduce_sum`` are differentiable and
their backward passes sum over processes (all-gather's backward is a reduce-scatter of
the gradients, all-reduce's backward an all-reduce of them). Each process therefore
receives d(sum_k L_k)/dx_r for its own inputs x_r, where L_k is the loss computed on rank
k; after DistributedDataParallel averages the parameter gradients over the W processes,
the model is updated with the gradient of mean_k L_k. The distributed losses in
``methods/losses.py`` are written so that mean_k L_k equals the single-process loss on
the global batch, which is what ``tests/test_ddp.py`` checks.

The differentiable collectives are ``torch.distributed._functional_collectives``
(``all_gather_single``, ``all_reduce``), which carry autograd in torch 2.14;
``torch.distributed.nn.functional.all_gather``/``all_reduce`` compute the same thing but are
deprecated in favour of them in the pinned torch (they warn on every call).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "world",
    "gather_with_grad",
    "concat_all_gather",
    "all_reduce_sum",
    "all_reduce_mean",
    "all_reduce_max",
    "batch_shuffle",
    "batch_unshuffle",
]


def is_distributed(group=None) -> bool:
    """True when torch.distributed is initialised and ``group`` (default: the world) has
    more than one process, i.e. when the collectives below do something."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world(group=None) -> tuple[int, int]:
    """(rank, world_size) of this process in ``group``; (0, 1) without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _group(group):
    return dist.group.WORLD if group is None else group


def _plain(t: torch.Tensor) -> torch.Tensor:
    # Functional collectives return a lazily waited AsyncCollectiveTensor; hand back a
    # plain tensor (waiting keeps the autograd graph).
    from torch.distributed._functional_collectives import AsyncCollectiveTensor

    return t.wait() if isinstance(t, AsyncCollectiveTensor) else t


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather ``x`` [n, ...] along dim 0 keeping the autograd graph: returns
    [W * n, ...], the processes' tensors concatenated in rank order (every process must
    pass the same shape). The backward pass sums, over processes, the gradients of the
    gathered rows that came from this process (a reduce-scatter). SimCLR's
    ``tpu_cross_replica_concat`` (official TF code, ``objective.py``) is the same
    operation. Identity in a single process."""
    if not is_distributed(group):
        return x
    from torch.distributed import _functional_collectives as fc

    return _plain(fc.all_gather_single(x.contiguous(), 0, _group(group)))


@torch.no_grad()
def concat_all_gather(x: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather ``x`` along dim 0 without gradient, in rank order: MoCo's
    ``concat_all_gather`` (facebookresearch/moco ``builder.py``), used for the keys before
    they are enqueued and for shuffle-BN. Returns ``x`` detached in a single process."""
    x = x.detach()
    if not is_distributed(group):
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, x.contiguous(), group=group)
    return torch.cat(out, dim=0)


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``x`` over processes, returned as a new tensor (``x`` is not modified), with
    gradient: the backward pass all-reduces (sums) the incoming gradients, so that it is
    the gradient of the sum of the processes' losses. Used for Barlow Twins' batch
    statistics and cross-correlation. Identity in a single process."""
    if not is_distributed(group):
        return x
    from torch.distributed import _functional_collectives as fc

    return _plain(fc.all_reduce(x.contiguous(), "sum", _group(group)))


def all_reduce_mean(x: torch.Tensor, group=None) -> torch.Tensor:
    """Mean of ``x`` over processes, with gradient (``all_reduce_sum(x) / W``)."""
    _, w = world(group)
    return all_reduce_sum(x, group) / w if is_distributed(group) else x


@torch.no_grad()
def all_reduce_max(x: torch.Tensor, group=None) -> torch.Tensor:
    """Element-wise maximum over processes, without gradient. Identity (detached) in a
    single process."""
    x = x.detach().clone()
    if is_distributed(group):
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=group)
    return x


@torch.no_grad()
def batch_shuffle(
    x: torch.Tensor, group=None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's shuffling BN (He et al. 2020, Sec. 3.3; facebookresearch/moco ``builder.py``
    ``_batch_shuffle_ddp``): gather the global batch, permute it, and give each process
    a slice of the permutation, so the key encoder's BatchNorm sees statistics of a
    sub-batch that is not the query's.

    x: [n, ...], this process's samples (all processes hold the same n). A permutation of
    the W * n global indices is drawn with ``torch.randperm`` on every process (so every
    process's generator advances the same way, as in the official code) on the CPU, from
    ``generator`` or the default torch generator, and rank 0's is broadcast to the others,
    so it is identical everywhere and reproducible under ``torch.manual_seed``.
    Returns (x_shuffled, idx_unshuffle): x_shuffled [n, ...] holds the global samples
    idx_shuffle[rank * n:(rank + 1) * n]; idx_unshuffle [W * n] = argsort(idx_shuffle)
    (the same on every process) is what ``batch_unshuffle`` needs. No gradient, as in the
    official code: it is applied to the momentum (key) encoder's input only.

    In a single process it returns (x, arange(n)) without drawing anything: with one
    process BatchNorm sees the whole batch whatever the order.
    """
    if not is_distributed(group):
        return x, torch.arange(x.shape[0], device=x.device)
    rank, w = world(group)
    n = x.shape[0]
    x_gather = concat_all_gather(x, group)
    idx_shuffle = torch.randperm(n * w, generator=generator).to(x.device)
    # Broadcast from rank 0 of the group (the official code: broadcast(idx_shuffle, src=0)).
    dist.broadcast(idx_shuffle, group=group, group_src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    idx_this = idx_shuffle.view(w, n)[rank]
    return x_gather[idx_this], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor, group=None) -> torch.Tensor:
    """Undo ``batch_shuffle`` on the outputs (facebookresearch/moco ``builder.py``
    ``_batch_unshuffle_ddp``): gather the shuffled outputs [n, ...] of every process and
    return, for this process, the rows of its own original samples, in their original
    order. No gradient. Identity (``x[idx_unshuffle]``, detached) in a single process."""
    if not is_distributed(group):
        return x.detach()[idx_unshuffle.to(x.device)]
    rank, w = world(group)
    n = x.shape[0]
    x_gather = concat_all_gather(x, group)
    idx_this = idx_unshuffle.to(x.device).view(w, n)[rank]
    return x_gather[idx_this]

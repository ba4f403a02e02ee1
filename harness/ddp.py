"""Data-parallel training across processes: set-up from the environment, and the few
collectives the trainer needs.

The process group comes from the standard ``env://`` variables (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``), which torchrun sets, and which the launcher exports from
submitit's ``TorchDistributedEnvironment`` on Slurm and on the local executor. Backend: NCCL
on GPU, gloo on CPU.

The global batch is ``train.batch_size`` whatever the world size: each of W processes takes
its 1/W slice of every global batch, gradients are averaged over processes, so ``train.lr``
(given for the global batch by every recipe) needs no rescaling and W processes follow the
same trajectory as one process on the same global batch, for methods whose loss is a mean
over samples with no batch-statistics coupling (see ``tests/test_launch.py``).
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_type: str = "cpu") -> bool:
    """Joins the process group described by the environment, once. False (and nothing
    done) for a single process."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return dist.is_available() and dist.is_initialized()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def average_gradients(params) -> None:
    """DDP's gradient averaging, done explicitly after ``backward``: one flat all-reduce.

    The trainer calls methods' ``training_step``, not ``forward``, and some methods leave
    parameters without a gradient for whole steps (SwAV's frozen prototypes); the
    ``DistributedDataParallel`` wrapper fits neither. Parameters without a gradient are
    skipped, and are so on every rank (they share the step and the code path)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Logged step metrics averaged over processes: the loss of the global batch, not of
    rank 0's slice."""
    if not active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist()))


def any_rank(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any of them (all must then act
    together, e.g. checkpoint on preemption)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""Worker side of tests/test_ddp.py: the fixed global batch and models, and the function
each spawned process runs. Kept free of pytest so that it imports cleanly in a process
started with the ``spawn`` method.

Each worker holds the rows rank * n:(rank + 1) * n of every global tensor, computes the
distributed losses on them with the models wrapped in DistributedDataParallel, and saves
its losses and gradients to ``out_dir/rank{rank}.pt``; the test computes the
single-process references on the whole batch and compares.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

WORLD = 2
N = 8  # global batch; each of the WORLD processes holds N // WORLD rows
D_IN, D_OUT, N_PROTOTYPES, QUEUE = 6, 5, 4, 6
TEMPERATURE, LAMBD = 0.5, 5e-3
SWAV = dict(epsilon=0.5, sinkhorn_iters=3, temperature=0.1, n_global=2)
SHUFFLE_SEED = 123
DTYPE = torch.float64


def global_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2024)
    return {
        "x1": torch.randn(N, D_IN, generator=g, dtype=DTYPE),
        "x2": torch.randn(N, D_IN, generator=g, dtype=DTYPE),
        "x3": torch.randn(N, D_IN, generator=g, dtype=DTYPE),  # a third (local) crop for SwAV
        "keys": torch.randn(N, D_OUT, generator=g, dtype=DTYPE),  # MoCo v3 momentum keys
        # SwAV queue, QUEUE rows per process per global crop: [2 crops, WORLD * QUEUE, D_OUT]
        "queue": torch.randn(2, WORLD * QUEUE, D_OUT, generator=g, dtype=DTYPE),
    }


def local(x: torch.Tensor, rank: int, world_size: int, dim: int = 0) -> torch.Tensor:
    return x.chunk(world_size, dim=dim)[rank]


def _fill(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def projector(seed: int = 1) -> nn.Module:
    return _fill(nn.Linear(D_IN, D_OUT).to(DTYPE), seed)


class SwAVNet(nn.Module):
    """A linear projector and prototypes: scores = normalised features . normalised prototypes."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(D_IN, D_OUT)
        self.prototypes = nn.Linear(D_OUT, N_PROTOTYPES, bias=False)
        self.to(DTYPE)
        _fill(self, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=1) @ F.normalize(self.prototypes.weight, dim=1).t()

    @torch.no_grad()
    def queue_scores(self, queue_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(queue_features, dim=1) @ F.normalize(self.prototypes.weight, dim=1).t()


def key_encoder() -> nn.Module:
    """MoCo's key encoder in miniature: Linear + BatchNorm1d, in training mode."""
    enc = nn.Sequential(nn.Linear(D_IN, D_OUT), nn.BatchNorm1d(D_OUT)).to(DTYPE)
    _fill(enc, 4)
    return enc.train()


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters()}


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def run_scenarios(rank: int, world_size: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from methods.components.distributed import (
        batch_shuffle,
        batch_unshuffle,
        concat_all_gather,
        gather_with_grad,
        world,
    )
    from methods.losses import (
        barlow_twins_loss_distributed,
        moco_v3_loss_distributed,
        nt_xent_distributed,
        sinkhorn_knopp_distributed,
        swav_loss_distributed,
    )

    data = global_batch()
    part = {k: local(v, rank, world_size) for k, v in data.items() if k != "queue"}
    out: dict = {"world": world()}

    # Plain collectives: rank order and the gradient convention (backward sums).
    x = _leaf(part["x1"])
    gathered = gather_with_grad(x)
    (gathered * torch.arange(1, gathered.numel() + 1, dtype=DTYPE).view_as(gathered)).sum().backward()
    out["gather"] = {"value": gathered.detach(), "no_grad": concat_all_gather(x), "grad": x.grad}

    # SimCLR NT-Xent with gathered negatives, a linear projector under DDP.
    model = DDP(projector())
    x1, x2 = _leaf(part["x1"]), _leaf(part["x2"])
    z = model(torch.cat([x1, x2]))
    z1, z2 = z.chunk(2)
    loss = nt_xent_distributed(z1, z2, TEMPERATURE)
    loss.backward()
    out["simclr"] = {"loss": loss.detach(), "x1": x1.grad, "x2": x2.grad, "params": _grads(model.module)}

    # MoCo v3 in-batch loss with the keys of every process (keys carry no gradient).
    model = DDP(projector())
    x1 = _leaf(part["x1"])
    loss = moco_v3_loss_distributed(model(x1), part["keys"], TEMPERATURE)
    loss.backward()
    out["moco_v3"] = {"loss": loss.detach(), "x1": x1.grad, "params": _grads(model.module)}

    # Barlow Twins: synced standardisation and all-reduced cross-correlation.
    model = DDP(projector(seed=2))
    x1, x2 = _leaf(part["x1"]), _leaf(part["x2"])
    z = model(torch.cat([x1, x2]))
    z1, z2 = z.chunk(2)
    loss = barlow_twins_loss_distributed(z1, z2, LAMBD)
    loss.backward()
    out["barlow"] = {"loss": loss.detach(), "x1": x1.grad, "x2": x2.grad, "params": _grads(model.module)}

    # SwAV: distributed Sinkhorn codes and the swapped-prediction loss over 3 crops, with
    # and without a (per-process) queue.
    for name, use_queue in (("swav", False), ("swav_queue", True)):
        net = SwAVNet()
        model = DDP(net)
        xs = [_leaf(part[k]) for k in ("x1", "x2", "x3")]
        scores = list(model(torch.cat(xs)).chunk(3))
        queue_scores = None
        if use_queue:
            queue_scores = [net.queue_scores(local(data["queue"][i], rank, world_size)) for i in range(2)]
        codes = [
            sinkhorn_knopp_distributed(
                scores[i] if queue_scores is None else torch.cat([queue_scores[i], scores[i]]),
                SWAV["epsilon"], SWAV["sinkhorn_iters"],
            )[-scores[i].shape[0]:]
            for i in range(2)
        ]
        loss = swav_loss_distributed(scores, queue_scores=queue_scores, **SWAV)
        loss.backward()
        out[name] = {
            "loss": loss.detach(), "codes": codes,
            "x": [x.grad for x in xs], "params": _grads(model.module),
        }

    # MoCo shuffle-BN: ranks seeded differently, so the permutation only agrees because it
    # is broadcast from rank 0.
    enc = key_encoder()
    torch.manual_seed(SHUFFLE_SEED + 1000 * rank)
    with torch.no_grad():
        x_shuffled, idx_unshuffle = batch_shuffle(part["x1"])
        keys = batch_unshuffle(enc(x_shuffled), idx_unshuffle)
        restored = batch_unshuffle(x_shuffled, idx_unshuffle)
        own_bn_keys = enc(part["x1"])  # BN on this process's own sub-batch (no shuffle)
    torch.manual_seed(SHUFFLE_SEED + 1000 * rank)
    _, idx_again = batch_shuffle(part["x1"])
    out["shuffle"] = {
        "x_shuffled": x_shuffled, "idx_unshuffle": idx_unshuffle, "keys": keys,
        "restored": restored, "own_bn_keys": own_bn_keys, "idx_again": idx_again,
    }
    return out


def worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results = run_scenarios(rank, world_size)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")

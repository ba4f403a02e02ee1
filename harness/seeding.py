"""Seeds and determinism (DESIGN.md, Reproducibility rules).

Randomness in a run has three homes, each seeded from the run seed:
- the global RNGs of Python, NumPy and torch (model init, anything a method draws);
- the sampler, whose order for epoch ``e`` is a pure function of (seed, e);
- the per-sample augmentations, drawn from a generator seeded by (seed, epoch, index), so
  they do not depend on which worker loads a sample or on where a resumed run restarts.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # Needed by cuBLAS for deterministic matmuls; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        torch.backends.cudnn.benchmark = False
        # Deterministic mode also zero-fills every new tensor; results do not depend on that
        # (no kernel reads memory it did not write), and it costs ~20% of a CPU step.
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.use_deterministic_algorithms(False)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    ss = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], dtype=np.uint64)) & (2**63 - 1)


def worker_init_fn(worker_id: int) -> None:
    # torch seeds each worker from the loader's base seed; propagate it to the libraries
    # torch does not touch so a transform using them is still reproducible.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        # As plain lists so checkpoints load with torch.load(weights_only=True).
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(st) -> list:
    kind, keys, pos, has_gauss, gauss = st
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]

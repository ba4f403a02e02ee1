"""Permutation sets with maximal Hamming distance (Noroozi & Favaro 2016, Algorithm 1)."""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def max_hamming_permutations(count: int, n: int = 9, seed: int = 0) -> np.ndarray:
    """``count`` permutations of ``range(n)`` chosen greedily so that each new one has the
    largest minimum Hamming distance to those already chosen; ties broken at random.

    Deterministic for a given (count, n, seed): the set is part of the method's definition,
    not of the run, so it does not depend on the run seed. Returns int64 [count, n].
    """
    all_perms = np.array(list(itertools.permutations(range(n))), dtype=np.int8)
    if not 1 <= count <= len(all_perms):
        raise ValueError(f"cannot choose {count} distinct permutations of {n} elements")
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(all_perms)))]
    min_dist = (all_perms != all_perms[chosen[0]]).sum(axis=1)
    for _ in range(count - 1):
        best = np.flatnonzero(min_dist == min_dist.max())
        pick = int(best[rng.integers(len(best))])
        chosen.append(pick)
        min_dist = np.minimum(min_dist, (all_perms != all_perms[pick]).sum(axis=1))
    return all_perms[chosen].astype(np.int64)


def min_pairwise_hamming(perms: np.ndarray) -> int:
    d = (perms[:, None, :] != perms[None, :, :]).sum(axis=2)
    np.fill_diagonal(d, perms.shape[1] + 1)
    return int(d.min())

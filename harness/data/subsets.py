"""Labelled subsets for semi-supervised fine-tuning.

ImageNet: the SimCLR 1% / 10% lists (Chen et al. 2020, google-research/simclr
``imagenet_subsets/``), one train filename per line. The package ships them xz-compressed in
``harness/data/imagenet_subsets/`` (provenance in its SOURCE.md), so no network is needed; a
user's own copy may be given as a path instead. Either is checked against the sha256 below.
Other suites: a seeded class-balanced subset, whose file list is saved with the run so that
the exact images can be named later.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from importlib import resources
from pathlib import Path

import torch

from harness.errors import UsageError
from harness.seeding import derive_seed

UPSTREAM = "https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets"
# Line counts and sha256 of the upstream files (google-research/simclr, imagenet_subsets/).
SIMCLR_SUBSETS = {
    1: ("1percent.txt", 12_811, "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17"),
    10: ("10percent.txt", 128_116, "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091"),
}


def _check(data: bytes, percent: int, origin: str) -> list[str]:
    name, lines, sha = SIMCLR_SUBSETS[percent]
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise UsageError(f"{origin}: sha256 {got[:12]}... does not match SimCLR's {name} ({sha[:12]}...); "
                         f"expected the unmodified upstream list ({UPSTREAM}/{name})")
    names = [ln.strip() for ln in data.decode().splitlines() if ln.strip()]
    if len(names) != lines:  # cannot happen with a matching hash; guards the table above
        raise UsageError(f"{origin}: {len(names)} names, expected {lines}")
    return names


def packaged_subset_bytes(percent: int) -> bytes:
    """The uncompressed bytes of the packaged SimCLR ``percent``% list (not yet checked)."""
    if percent not in SIMCLR_SUBSETS:
        raise UsageError(f"no SimCLR subset for {percent}%; expected one of {sorted(SIMCLR_SUBSETS)}")
    name = SIMCLR_SUBSETS[percent][0]
    try:
        import lzma  # stdlib, but optional in Python builds without liblzma
    except ImportError:
        raise UsageError(f"this Python lacks the lzma module, needed to read the packaged {name}.xz; "
                         f"pass eval.semi_supervised.subset_dir=/path/holding/{name}") from None
    try:
        return lzma.decompress((resources.files("harness.data") / "imagenet_subsets" / f"{name}.xz").read_bytes())
    except (OSError, lzma.LZMAError) as e:
        raise UsageError(f"packaged subset list {name}.xz unreadable ({e}); reinstall ssl-harness "
                         f"or pass eval.semi_supervised.subset_dir=/path/holding/{name}") from None


def simclr_subset(percent: int, path: str | Path | None = None) -> list[str]:
    """The SimCLR ``percent``% list of ImageNet train filenames (``n01440764_10026.JPEG``).

    ``path``: a user's own copy of the upstream file; otherwise the copy shipped in the
    package. Either must match SimCLR's sha256."""
    if percent not in SIMCLR_SUBSETS:
        raise UsageError(f"no SimCLR subset for {percent}%; expected one of {sorted(SIMCLR_SUBSETS)}")
    name = SIMCLR_SUBSETS[percent][0]
    if path is None:
        return _check(packaged_subset_bytes(percent), percent, f"packaged {name}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"subset list {path} does not exist; expected SimCLR's {name}")
    return _check(path.read_bytes(), percent, str(path))


def select_listed(samples: list[tuple[str, int]], names: list[str], classes: list[str]) -> list[int]:
    """Indices of ``samples`` (ImageFolder (path, label) pairs) whose file names are listed.

    Only listed names of the ``classes`` present count (an ImageNet-100 folder gets the
    list's images of its 100 classes); each of those must be present, in its class folder."""
    present = set(classes)
    wanted = [n for n in names if n.split("_")[0] in present]
    if not wanted:
        raise UsageError(f"none of the {len(names)} listed images belongs to the train folder's classes "
                         f"(e.g. {classes[0] if classes else '-'}); expected ImageNet wnid folders")
    by_name = {Path(p).name: i for i, (p, _) in enumerate(samples)}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise UsageError(f"{len(missing)} of {len(wanted)} listed images are not in the train folder "
                         f"(e.g. {missing[0]}); expected train/<wnid>/<wnid>_<n>.JPEG for each")
    picked = [by_name[n] for n in wanted]
    for n, i in zip(wanted, picked):
        folder = Path(samples[i][0]).parent.name
        if folder != n.split("_")[0]:
            raise UsageError(f"listed image {n} lies in train/{folder}/, not in its class folder train/{n.split('_')[0]}/")
    return sorted(picked)


def balanced_subset(labels: list[int], percent: float, seed: int) -> list[int]:
    """A seeded class-balanced ``percent``% of the indices: per class, ceil(percent% of its
    images) (at least one), drawn without replacement."""
    if not 0 < percent <= 100:
        raise UsageError(f"subset of {percent}%: expected a percentage in (0, 100]")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[int(y)].append(i)
    g = torch.Generator().manual_seed(derive_seed(seed, 20, int(percent * 1000)))
    picked = []
    for y in sorted(by_class):
        idx = by_class[y]
        k = max(1, math.ceil(len(idx) * percent / 100))
        picked += [idx[j] for j in torch.randperm(len(idx), generator=g)[:k].tolist()]
    return sorted(picked)

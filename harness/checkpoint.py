"""Atomic checkpoints: a job killed at any instant leaves the last complete checkpoint intact."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from harness.rundir import LAST_CHECKPOINT as LAST  # the run folder owns its file names


def save_atomic(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # Make the rename itself durable, not only the file's bytes.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: Path, map_location="cpu"):
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def last_path(ckpt_dir: Path) -> Path:
    """Where the latest checkpoint of ``ckpt_dir`` is written."""
    return Path(ckpt_dir) / LAST


def latest(ckpt_dir: Path) -> Path | None:
    p = last_path(ckpt_dir)
    return p if p.exists() else None

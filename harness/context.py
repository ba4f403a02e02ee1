"""The run context: everything a stage of one run needs, built once per run.

Stages (``harness.stages``) take a ``RunContext`` instead of long argument lists: the
resolved config, the method class, the prepared suite, the run folder, the tracker (a
``NullTracker`` where nothing is tracked: other DDP ranks, untracked tuning sweeps), the
device and determinism, the MLflow parent run and the identity tags every run carries.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import torch

from harness import provenance, tags
from harness.config import Config
from harness.errors import UsageError
from harness.rundir import RunFolder


@dataclass
class RunContext:
    cfg: Config
    method_cls: type
    suite: object
    folder: RunFolder
    tracker: object  # harness.tracking.Tracker or NullTracker
    device: torch.device
    deterministic: bool
    log: Callable = print
    main: bool = True  # rank 0 (or the only process): the one that writes, tracks and speaks
    parent: str | None = None  # the MLflow parent run (pretraining)
    identity: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])


def pick_device(cfg: Config) -> torch.device:
    want = cfg["device"]
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={want} but no CUDA device is visible; use device=cpu")
    return torch.device(want)


def deterministic(cfg: Config) -> bool:
    det = cfg["train.deterministic"]
    return pick_device(cfg).type == "cpu" if det is None else bool(det)


def identity_tags(cfg: Config, *, method: str, suite: str, folder: RunFolder, device: torch.device,
                  deterministic: bool, data_hash: str, command: list[str], invocation: list[str],
                  extra: dict, method_cls=None) -> dict:
    """The tags every run of this run folder carries (parent and children)."""
    from harness import ddp

    commit, dirty = provenance.git_state()
    world = ddp.world_size()
    return {
        tags.METHOD: method, tags.RECIPE: cfg["method.recipe"], tags.BACKBONE: cfg["backbone.name"],
        tags.WIDTH: cfg["backbone.width"], tags.SUITE: suite, tags.SEED: int(cfg["seed"]),
        tags.EPOCHS: cfg["train.epochs"], tags.CONFIG_HASH: cfg.hash, tags.CONFIG_ID: cfg.config_id,
        tags.METHOD_FAMILY: getattr(method_cls, "family", "other"), tags.BASELINE: getattr(method_cls, "baseline", ""),
        tags.COMMAND: provenance.rerun_command(command),
        tags.INVOCATION: provenance.rerun_command(invocation) if invocation else "",
        tags.GIT_COMMIT: commit, tags.GIT_DIRTY: dirty, tags.DATASET_HASH: data_hash,
        tags.DEVICE: provenance.device_description(device), tags.DETERMINISTIC: deterministic,
        tags.VERSIONS: json.dumps(provenance.package_versions(), sort_keys=True),
        tags.SLURM_JOB_ID: provenance.slurm_job_id(), tags.OUTPUT_DIR: str(folder.root),
        tags.CODE_DIR: provenance.code_dir(),
        # train.lr is given for the global batch; it is split over the processes, never rescaled.
        tags.WORLD_SIZE: world, tags.GLOBAL_BATCH: cfg["train.batch_size"],
        tags.PER_PROCESS_BATCH: int(cfg["train.batch_size"]) // world,
        tags.LR_SCALING: "none: train.lr is for the global batch train.batch_size, split over the processes",
        **{k: str(v) for k, v in extra.items()},
    }

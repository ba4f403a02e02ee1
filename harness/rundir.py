"""The run folder: the one owner of its layout and its rules.

Every path in a run's output directory is spelled here and nowhere else; the pipeline, the
launcher, studies, evals (through the folder they are given), the leaderboard and the bench
scripts ask this module. It also owns:

- stage identities (``pretrain``, ``eval:<name>``) and what marks each one done: a stage's
  final file is written last and atomically, so its existence means the stage finished;
- the config-hash guard: a folder holds one configuration, a different one is refused;
- ``results.json``: every finished stage gathered into one file, rewritten under a lock
  because evals may finish as concurrent jobs;
- the shared feature cache of the evals;
- locks: a stage runs in one process at a time. Two identical commands started together
  do not both pretrain into one folder and both create MLflow runs; the second is told who
  holds the stage. ``flock`` locks die with their process, so a killed job never leaves a
  stale lock behind.

Layout::

    config.json  config.yaml  state.json  results.json  unsent_metrics.jsonl
    checkpoints/last.pt
    pretrain/method.pt  pretrain/backbone.pt  pretrain/loss.png  pretrain/reconstructions.png
    evals/<name>/metrics.json  evals/<name>/run.json  evals/<name>/...  (the eval's own files)
    evals/_features/        (features shared by the evals that read the same images)
    .locks/<stage>.lock
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import tempfile
from pathlib import Path

from harness.errors import UsageError

PRETRAIN = "pretrain"
_EVAL_PREFIX = "eval:"
LAST_CHECKPOINT = "last.pt"  # inside a checkpoint folder (harness.checkpoint)


def eval_stage(name: str) -> str:
    return f"{_EVAL_PREFIX}{name}"


def stage_eval(stage: str) -> str | None:
    """The eval name of an ``eval:<name>`` stage, None for pretraining."""
    return stage[len(_EVAL_PREFIX):] if stage.startswith(_EVAL_PREFIX) else None


def write_json(path: Path, obj) -> None:
    """Atomically: a reader never sees half a file, a kill leaves the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


class StageBusy(UsageError):
    """Another process holds a stage of this folder."""


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------
    config_json = property(lambda self: self.root / "config.json")
    config_yaml = property(lambda self: self.root / "config.yaml")
    state_json = property(lambda self: self.root / "state.json")
    results_json = property(lambda self: self.root / "results.json")
    unsent_metrics = property(lambda self: self.root / "unsent_metrics.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")
    pretrain_dir = property(lambda self: self.root / "pretrain")
    final_weights = property(lambda self: self.pretrain_dir / "method.pt")
    backbone_weights = property(lambda self: self.pretrain_dir / "backbone.pt")
    loss_plot = property(lambda self: self.pretrain_dir / "loss.png")
    reconstructions = property(lambda self: self.pretrain_dir / "reconstructions.png")
    feature_cache = property(lambda self: self.root / "evals" / "_features")
    _locks = property(lambda self: self.root / ".locks")

    def eval_dir(self, name: str) -> Path:
        return self.root / "evals" / name

    def _eval_metrics(self, name: str) -> Path:
        return self.eval_dir(name) / "metrics.json"

    def _eval_run_file(self, name: str) -> Path:
        # The child run id lives beside the eval's output, not in a file shared by all
        # evals: evals may run as concurrent jobs.
        return self.eval_dir(name) / "run.json"

    # -- stages -----------------------------------------------------------------------------
    def stage_done(self, stage: str) -> bool:
        name = stage_eval(stage)
        return (self.final_weights if name is None else self._eval_metrics(name)).exists()

    def pending(self, stages) -> list[str]:
        return [s for s in stages if not self.stage_done(s)]

    # -- configuration ----------------------------------------------------------------------
    def check_config(self, config_hash: str) -> None:
        """Refuses a folder that holds a run of another configuration."""
        saved = read_json(self.config_json)
        if saved and saved["config_hash"] != config_hash:
            raise UsageError(f"{self.root} holds a run with a different config (hash {saved['config_hash'][:8]}, "
                             f"this one {config_hash[:8]}); choose another --output-dir")

    def write_config(self, cfg) -> None:
        self.check_config(cfg.hash)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.config_json, cfg.to_dict())
        self.config_yaml.write_text(cfg.to_yaml())

    # -- tracking ids -----------------------------------------------------------------------
    def parent_run_id(self) -> str | None:
        return read_json(self.state_json, {}).get("parent_run_id")

    def set_parent_run_id(self, run_id: str) -> None:
        write_json(self.state_json, {"parent_run_id": run_id})

    def eval_run_id(self, name: str) -> str | None:
        return (read_json(self._eval_run_file(name)) or {}).get("run_id")

    def set_eval_run_id(self, name: str, run_id: str) -> None:
        write_json(self._eval_run_file(name), {"run_id": run_id})

    # -- results ----------------------------------------------------------------------------
    def eval_result(self, name: str) -> dict | None:
        """What a finished eval wrote: metrics, protocol, preset, config hash, declaration."""
        return read_json(self._eval_metrics(name))

    def write_eval_result(self, name: str, record: dict) -> None:
        write_json(self._eval_metrics(name), record)  # last: its existence marks the eval done

    def pretrain_history(self) -> list[float]:
        from harness import checkpoint

        return checkpoint.load(self.final_weights)["history"].tolist() if self.final_weights.exists() else []

    def write_results(self, evals: list[str], config_hash: str) -> dict:
        """``results.json`` from every finished stage on disk, so stages run as separate
        jobs add up to the same file as one job running them all."""
        with self._lock_file("results", blocking=True):
            results, declarations = {}, {}
            for name in evals:
                done = self.eval_result(name)
                if done is not None:
                    results[name] = done["metrics"]
                    if done.get("declaration"):
                        declarations[name] = done["declaration"]
            out = {"results": results, "declarations": declarations, "pretrain_loss": self.pretrain_history(),
                   "config_hash": config_hash}
            write_json(self.results_json, out)
        return out

    def results(self) -> dict | None:
        """``results.json`` as written by ``write_results``; None before any stage finished."""
        return read_json(self.results_json)

    # -- locks ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock_stages(self, stages, command: str = ""):
        """Holds every stage of ``stages`` for this process; a stage another process holds
        is a ``StageBusy`` naming that process, raised before anything is written."""
        with contextlib.ExitStack() as stack:
            for stage in sorted(stages):
                stack.enter_context(self._lock_file(stage.replace(":", "-"), blocking=False, command=command))
            yield

    @contextlib.contextmanager
    def short_lock(self, name: str):
        """A lock held for a moment (creating the folder's MLflow parent run): waits."""
        with self._lock_file(name, blocking=True):
            yield

    @contextlib.contextmanager
    def _lock_file(self, name: str, blocking: bool, command: str = ""):
        self._locks.mkdir(parents=True, exist_ok=True)
        path = self._locks / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                raise StageBusy(f"{self.root} is in use: stage '{name}' is being run by {self._holder(path)}; "
                                f"wait for it to finish (re-running then skips what it finished) or choose "
                                f"another --output-dir") from None
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                      "since": datetime.datetime.now().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _holder(path: Path) -> str:
        try:
            h = json.loads(path.read_text())
        except (OSError, ValueError):
            return "another process"
        text = f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')}"
        return f"{text} ({h['command']})" if h.get("command") else text

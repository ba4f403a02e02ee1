"""Where a run executes: in this process (default), as a local background job, or on Slurm.

One code path for all three (submitit): the job callable holds only the run request; all
state lives in the run directory (checkpoints, per-stage outputs), so a job that is
preempted, requeued or re-submitted picks up where the last one stopped.

- ``inprocess``: ``execute`` here and now.
- ``local``: submitit's local executor (a detached process; several tasks give local DDP).
- ``slurm``: submitit's Slurm executor. A single run becomes one job per stage (pretrain,
  then each eval with ``afterok`` on the pretrain job), and a stage whose output for the same
  config hash already exists is not submitted; a sweep is one job array. Jobs are
  checkpointable: on USR2 the trainer checkpoints at the end of its current step and the job
  is requeued (``harness.preemption``). The code is snapshotted at submission
  (``submitit.helpers.RsyncSnapshot``) so a requeued job runs the code it was submitted with.

Every submitted job is appended to ``<jobs dir>/jobs.jsonl``, which ``harness status`` reads.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import tags
from harness.errors import RunFailed, RunsFailed, UsageError
from harness.pipeline import RunRequest, build_config, default_output_dir, execute, run_folder
from harness.rundir import PRETRAIN, eval_stage

LAUNCHERS = ("inprocess", "local", "slurm")
DEFAULT_JOBS_DIR = Path("runs") / "jobs"


@dataclass
class LaunchOptions:
    launcher: str = "inprocess"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 24 * 60
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # default: one per GPU, else 1
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    constraint: str | None = None
    exclude: str | None = None
    signal_delay_s: int = 120
    max_requeues: int = 3
    array_parallelism: int = 64
    jobs_dir: Path = DEFAULT_JOBS_DIR
    snapshot: bool = True
    wait: bool = False
    extra: dict = field(default_factory=dict)  # more sbatch options, e.g. {"mail_type": "END"}

    @property
    def ntasks(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    def validate(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise UsageError(f"unknown launcher '{self.launcher}'; expected one of: {', '.join(LAUNCHERS)}")
        for name in ("nodes", "time_min", "max_requeues", "array_parallelism"):
            if int(getattr(self, name)) < (0 if name == "max_requeues" else 1):
                flag = {"time_min": "time"}.get(name, name).replace("_", "-")
                raise UsageError(f"--{flag}={getattr(self, name)}: expected a positive integer")
        if self.launcher == "local" and self.nodes != 1:
            raise UsageError(f"--nodes={self.nodes} needs --launcher slurm; the local launcher runs on one node")
        if self.launcher == "inprocess" and (self.nodes != 1 or self.ntasks != 1):
            raise UsageError("several processes need --launcher local (one node) or --launcher slurm; "
                             "or start the processes yourself with torchrun")


# -- the job -------------------------------------------------------------------------------

class HarnessJob:
    """The callable submitit pickles: a run request and nothing else.

    ``checkpoint`` is submitit's hook on preemption or timeout: the state is already on disk
    (the trainer wrote it at the end of the step in progress), so requeuing is re-submitting
    the same request, which resumes from it and re-attaches to the same MLflow run."""

    def __init__(self, req: RunRequest):
        self.req = req

    def __call__(self) -> dict:
        import signal

        import submitit

        from harness import ddp, preemption

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for env:// (GPU pinning is ours).
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            import torch

            ddp.init_from_env("cuda" if torch.cuda.is_available() else "cpu")
        preemption.defer(signal.SIGUSR2)
        try:
            return execute(self.req)
        finally:
            ddp.destroy()

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(HarnessJob(self.req), *args, **kwargs)


# -- submission ----------------------------------------------------------------------------

def _executor(opts: LaunchOptions, folder: Path, name: str):
    import submitit

    cluster = "local" if opts.launcher == "local" else "slurm"
    if cluster == "slurm" and not shutil.which("sbatch"):
        raise UsageError("--launcher slurm needs the Slurm client commands (sbatch, squeue) on PATH; "
                         "none found on this machine")
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, slurm_max_num_timeout=opts.max_requeues)
    params = dict(name=name, timeout_min=int(opts.time_min), nodes=int(opts.nodes), tasks_per_node=opts.ntasks,
                  gpus_per_node=int(opts.gpus_per_node))
    if opts.cpus_per_task:
        params["cpus_per_task"] = int(opts.cpus_per_task)
    if opts.mem_gb:
        params["mem_gb"] = float(opts.mem_gb)
    if cluster == "slurm":
        params["slurm_signal_delay_s"] = int(opts.signal_delay_s)
        params["slurm_array_parallelism"] = int(opts.array_parallelism)
        for key in ("partition", "account", "qos", "constraint", "exclude"):
            if getattr(opts, key):
                params[f"slurm_{key}"] = getattr(opts, key)
        for key, value in opts.extra.items():
            params[f"slurm_{key}"] = value
    ex.update_parameters(**params)
    return ex


def _source_root() -> Path | None:
    """The git checkout this harness is imported from, if any: what a snapshot copies."""
    import harness

    root = Path(harness.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


class _Snapshot:
    """``RsyncSnapshot`` of the harness's own checkout, when it runs from one (an installed
    wheel is already immutable). Jobs submitted inside start in the snapshot, where Python
    finds the snapshot's packages first on its path."""

    def __init__(self, opts: LaunchOptions, folder: Path, log):
        self.ctx = None
        if opts.launcher != "slurm" or not opts.snapshot:
            return
        root = _source_root()
        if root is None:
            return
        import submitit

        if not submitit.helpers.RsyncSnapshot.available():
            raise UsageError("the code snapshot for Slurm jobs needs rsync (apt-get install rsync), "
                             "or pass --no-snapshot to run jobs on the live checkout")
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        self.path = folder / "snapshots" / stamp
        self.ctx = submitit.helpers.RsyncSnapshot(snapshot_dir=self.path, root_dir=root)
        log(f"[harness] code snapshot: {self.path}")

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def _absolute(req: RunRequest) -> tuple[RunRequest, object, list[str]]:
    """The request with everything a job on another node (and another working directory:
    the snapshot) must not re-resolve: output directory and tracking URI. Validates the
    request on the way, so bad input fails here, before anything is submitted."""
    from harness.tracking import Tracker, default_tracking_uri

    cfg, _, _, evals = build_config(req)
    out = Path(req.output_dir).resolve() if req.output_dir else default_output_dir(req, cfg)
    uri = req.tracking_uri or default_tracking_uri()
    # Reachable, and its schema and experiment created now: jobs starting together on a
    # fresh SQLite store would otherwise race each other through MLflow's migrations.
    Tracker(uri)
    return dataclasses.replace(req, output_dir=str(out), tracking_uri=uri, seed=int(cfg["seed"]),
                               backbone=cfg["backbone.name"]), cfg, evals


def _pending_stages(req: RunRequest, cfg, evals: list[str]) -> list[str]:
    """Stages whose output for this config hash is not in the run folder yet."""
    folder = run_folder(req, cfg)
    folder.check_config(cfg.hash)
    return folder.pending([PRETRAIN, *(eval_stage(e) for e in evals)])


def _record(opts: LaunchOptions, job, req: RunRequest, stage: str, sweep_id: str | None = None) -> None:
    opts.jobs_dir.mkdir(parents=True, exist_ok=True)
    row = {"job_id": str(job.job_id), "launcher": opts.launcher, "folder": str(Path(job.paths.folder)),
           "stdout": str(job.paths.stdout), "method": req.method, "backbone": req.backbone, "suite": req.suite,
           "seed": req.seed, "stage": stage, "output_dir": req.output_dir, "sweep_id": sweep_id,
           "submitted": datetime.datetime.now().isoformat(timespec="seconds")}
    with open(opts.jobs_dir / "jobs.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def submit_run(req: RunRequest, opts: LaunchOptions, log=print) -> list:
    """Submit one run; returns the submitit jobs (empty when every stage is already done)."""
    opts.validate()
    req, cfg, evals = _absolute(req)
    stages = _pending_stages(req, cfg, evals)
    if not stages:
        log(f"[harness] every stage of {req.output_dir} is already finished (config {cfg.hash[:8]}): nothing to submit")
        return []
    folder = opts.jobs_dir.resolve()
    req = dataclasses.replace(req, tags={**req.tags, tags.LAUNCHER: opts.launcher})
    name = f"harness-{req.method}-s{cfg['seed']}"
    jobs = []
    with _Snapshot(opts, folder, log):
        ex = _executor(opts, folder, name)
        if opts.launcher == "local":
            # One detached process runs every stage in turn (no scheduler to order them).
            job = ex.submit(HarnessJob(dataclasses.replace(req, stages=tuple(stages))))
            jobs.append((job, ",".join(stages)))
        else:
            after = None
            if stages[0] == PRETRAIN:
                after = ex.submit(HarnessJob(dataclasses.replace(req, stages=(PRETRAIN,))))
                jobs.append((after, PRETRAIN))
            evals = [s for s in stages if s != PRETRAIN]
            if evals:
                # Evals hold one process each (no DDP): ask for one task and at most one GPU.
                ex.update_parameters(nodes=1, tasks_per_node=1, gpus_per_node=min(opts.gpus_per_node, 1),
                                     slurm_additional_parameters={"dependency": f"afterok:{after.job_id}"} if after else {})
                for stage in evals:
                    job = ex.submit(HarnessJob(dataclasses.replace(req, stages=(stage,))))
                    jobs.append((job, stage))
    for job, stage in jobs:
        _record(opts, job, req, stage)
        log(f"[harness] submitted {opts.launcher} job {job.job_id} ({stage}); log: {job.paths.stdout}")
    log(f"[harness] output: {req.output_dir}; follow with `harness status`")
    return [job for job, _ in jobs]


def _last_line(error, default: str) -> str:
    """The last line of an error's text (a traceback's is the exception itself)."""
    text = str(error).strip()
    return text.splitlines()[-1] if text else default


def new_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def submit_sweep(reqs: list[RunRequest], opts: LaunchOptions, log=print,
                 sweep_id: str | None = None) -> tuple[str, list, list[RunRequest]]:
    """All runs of a sweep as one job array (Slurm), one tag ``harness.sweep_id`` on each.
    Returns the sweep id, the jobs (none in-process) and the requests as resolved (absolute
    output directories)."""
    opts.validate()
    sweep_id = sweep_id or new_id()
    prepared = [_absolute(dataclasses.replace(r, tags={**r.tags, tags.SWEEP_ID: sweep_id,
                                                        tags.LAUNCHER: opts.launcher}))[0] for r in reqs]
    dirs = [r.output_dir for r in prepared]
    if len(set(dirs)) != len(dirs):
        raise UsageError("two runs of the sweep resolve to the same output directory; vary seeds, methods or backbones")
    log(f"[harness] sweep {sweep_id}: {len(prepared)} runs")
    if opts.launcher == "inprocess":
        failed = []
        for i, r in enumerate(prepared, start=1):
            # One run's failure must not cost the rest of the grid: go on, report at the end.
            try:
                execute(r)
            except Exception as e:  # noqa: BLE001 - any run error; KeyboardInterrupt still stops
                last = _last_line(e, type(e).__name__)
                log(f"[harness] run {i}/{len(prepared)} failed ({r.output_dir}): {type(e).__name__}: {last}; "
                    f"going on with the others")
                failed.append((str(r.output_dir), f"{type(e).__name__}: {last}"))
        if failed:
            raise RunsFailed(failed, len(prepared), prepared=prepared)
        return sweep_id, [], prepared
    folder = opts.jobs_dir.resolve()
    with _Snapshot(opts, folder, log):
        ex = _executor(opts, folder, f"harness-sweep-{sweep_id}")
        with ex.batch():
            jobs = [ex.submit(HarnessJob(r)) for r in prepared]
    for job, r in zip(jobs, prepared):
        _record(opts, job, r, "all", sweep_id)
    first = jobs[0].job_id.split("_")[0] if jobs else "-"
    log(f"[harness] submitted {len(jobs)} runs as {'job array ' + first if opts.launcher == 'slurm' else 'local jobs'}; "
        f"logs under {folder}; follow with `harness status --sweep {sweep_id}`")
    return sweep_id, jobs, prepared


# -- waiting and status --------------------------------------------------------------------

def read_jobs(jobs_dir: Path) -> list[dict]:
    path = Path(jobs_dir) / "jobs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _result(folder: str, job_id: str):
    """("success", value) / ("error", traceback) from submitit's result file, or None while
    the job has not finished (a requeued job has none until its last attempt ends)."""
    from submitit.core.utils import JobPaths, pickle_load

    # Task 0 (rank 0) writes the result; an array element's index is part of its job id.
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    return pickle_load(paths.result_pickle) if paths.result_pickle.exists() else None


# Slurm states in which a job may still write its result (a requeued job passes through them).
_LIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
         "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")


def _gone(job) -> bool:
    """The job can no longer write a result: cancelled, killed, or waiting on a dependency
    that failed. (A finished job writes its result before its process exits.)"""
    import submitit

    if isinstance(job, submitit.SlurmJob):
        state = _array_state(str(job.job_id), _squeue_states([str(job.job_id)]))
        return state is None or not state.startswith(_LIVE) or "DependencyNeverSatisfied" in state
    return not _pid_alive(str(job.job_id))


def wait(jobs, poll_s: float = 2.0, log=print, grace_polls: int = 5) -> list:
    """Block until every job has written its result; the results in order. A failed job, or
    one that ended without a result, is a RunFailed naming its log."""
    outcomes = wait_all(jobs, poll_s, grace_polls)
    for job, (ok, value) in zip(jobs, outcomes):
        if not ok:
            raise RunFailed(f"job {job.job_id} {value}")
    return [value for _, value in outcomes]


def wait_all(jobs, poll_s: float = 2.0, grace_polls: int = 5) -> list[tuple[bool, object]]:
    """Block until every job has ended; per job (True, result) or (False, why, naming its
    log). A failed job does not stop the wait for the others."""
    pending = list(jobs)
    gone = {str(j.job_id): 0 for j in pending}
    ended: dict[int, tuple[bool, object]] = {}
    while len(ended) < len(pending):
        for i, job in enumerate(pending):
            if i in ended:
                continue
            res = _result(str(job.paths.folder), str(job.job_id))
            if res is not None:
                outcome, value = res
                if outcome == "success":
                    ended[i] = (True, value)
                else:
                    last = _last_line(value, "unknown error")
                    ended[i] = (False, f"failed: {last} (log: {job.paths.stderr})")
                continue
            # Several polls in a row, so a job between exit and result file is not misread.
            gone[str(job.job_id)] = gone[str(job.job_id)] + 1 if _gone(job) else 0
            if gone[str(job.job_id)] >= grace_polls:
                ended[i] = (False, f"ended without a result (cancelled, killed, or its dependency failed); "
                                   f"log: {job.paths.stderr}")
        if len(ended) < len(pending):
            time.sleep(poll_s)
    return [ended[i] for i in range(len(pending))]


def _squeue_states(job_ids: list[str]) -> dict[str, str]:
    if not job_ids or not shutil.which("squeue"):
        return {}
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(sorted({j.split('_')[0] for j in job_ids}))],
                         capture_output=True, text=True, timeout=60)
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:  # a pending job shows why it waits, e.g. "PENDING (Dependency)"
            states[parts[0]] = f"{parts[1]} ({parts[2]})" if parts[1] == "PENDING" else parts[1]
    return states


def _array_state(job_id: str, states: dict[str, str]) -> str | None:
    if job_id in states:
        return states[job_id]
    base, _, task = job_id.partition("_")
    for key, state in states.items():  # a pending array shows as 123_[0-2]
        if key.startswith(f"{base}_[") and task:
            return state
    return None


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError):
        return False


def job_states(jobs_dir: Path, sweep: str | None = None) -> list[dict]:
    rows = [r for r in read_jobs(jobs_dir) if sweep is None or r.get("sweep_id") == sweep]
    live = _squeue_states([r["job_id"] for r in rows if r["launcher"] == "slurm"])
    for r in rows:
        res = _result(r["folder"], r["job_id"]) if Path(r["folder"]).exists() else None
        if res is not None:
            r["state"] = "COMPLETED" if res[0] == "success" else "FAILED"
        elif r["launcher"] == "slurm":
            r["state"] = _array_state(r["job_id"], live) or "ENDED (no result: cancelled or killed)"
        else:
            r["state"] = "RUNNING" if _pid_alive(r["job_id"]) else "ENDED (no result: killed)"
    return rows

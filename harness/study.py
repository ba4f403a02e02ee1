"""``harness study arch``: every method on every architecture and width, several seeds, then
the architecture-dependence report (leaderboard/study_report.py).

The grid runs through the launcher like any sweep (in-process, or one Slurm job array that
the study waits for); each run is tagged ``harness.study_id`` (and the sweep id). Widths are
the Revisiting study's filters factors k (Kolesnikov et al. 2019): ``backbone.width = k/4``,
so ``--widths 4`` is the standard network. The report is logged to its own MLflow run
(``harness.stage=study``) and published by ``harness leaderboard build``.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd

from harness.errors import RunsFailed, UsageError
from harness.launch import LaunchOptions, new_id, submit_sweep, wait_all
from harness.pipeline import RunRequest, rerun_args


def grid(methods, backbones, widths, seeds, *, suite, evals, epochs, overrides, tracking_uri, study_id,
         argv=()) -> list[RunRequest]:
    reqs = []
    for method, backbone, k, seed in itertools.product(methods, backbones, widths, seeds):
        if k <= 0:
            raise UsageError(f"--widths: {k} is not a positive filters factor (4 = the standard width)")
        extra = {**overrides, "backbone.width": k / 4}
        reqs.append(RunRequest(method=method, suite=suite, backbone=backbone, evals=evals, seed=seed, epochs=epochs,
                               tracking_uri=tracking_uri, overrides=extra, argv=list(argv),
                               tags={"harness.study_id": study_id, "harness.study_width": k}))
    return reqs


def collect(reqs: list[RunRequest], eval_name: str, metric: str) -> tuple[pd.DataFrame, list[RunRequest]]:
    """The finished runs' scores, and the runs without an ``eval_name`` result."""
    rows, missing = [], []
    for r in reqs:
        path = Path(r.output_dir) / "results.json"
        results = json.loads(path.read_text())["results"] if path.exists() else {}
        if eval_name not in results:
            missing.append(r)
            continue
        rows.append({"method": r.method, "backbone": r.backbone, "width": r.tags["harness.study_width"],
                     "seed": r.seed, "score": float(results[eval_name][metric])})
    return pd.DataFrame(rows, columns=["method", "backbone", "width", "seed", "score"]), missing


def run_arch_study(methods, backbones, widths, seeds, *, suite="digits", evals="linear", epochs=None, overrides=None,
                   tracking_uri=None, opts: LaunchOptions | None = None, out_dir=None, metric="top1",
                   log=print, argv=()) -> Path:
    from harness.tracking import Tracker, default_tracking_uri
    from leaderboard.study_report import write_report

    opts = opts or LaunchOptions()
    eval_name = evals.split(",")[0].strip()
    if eval_name == "all":
        raise UsageError("--eval: name the eval whose metric the study compares (e.g. linear), not 'all'")
    study_id = new_id()
    tracking_uri = tracking_uri or default_tracking_uri()
    reqs = grid(methods, backbones, widths, seeds, suite=suite, evals=evals, epochs=epochs, overrides=overrides or {},
                tracking_uri=tracking_uri, study_id=study_id, argv=argv)
    log(f"[harness] study {study_id}: {len(methods)} methods x {len(backbones)} architectures x {len(widths)} widths "
        f"x {len(seeds)} seeds = {len(reqs)} runs ({opts.launcher})")
    # A failed run leaves a hole in the table, not a lost study: the report is written from
    # the runs that finished, then the failures are the command's error.
    failed = []
    try:
        _, jobs, prepared = submit_sweep(reqs, opts, log=log, sweep_id=study_id)
    except RunsFailed as e:
        jobs, prepared, failed = [], e.prepared, e.failed
    if jobs:
        log(f"[harness] waiting for {len(jobs)} jobs (harness status --sweep {study_id})")
        failed = [(str(r.output_dir), why) for r, (ok, why) in zip(prepared, wait_all(jobs)) if not ok]
    runs, missing = collect(prepared, eval_name, metric)
    known = {d for d, _ in failed}
    failed += [(str(r.output_dir), f"no {eval_name} result") for r in missing if str(r.output_dir) not in known]
    if runs.empty:
        raise RunsFailed(failed, len(prepared), "study")
    out_dir = Path(out_dir or Path("runs") / "studies" / study_id).resolve()
    commands = [" ".join(["harness", *rerun_args(r, _cfg(r), Path(r.output_dir), [eval_name])]) for r in prepared[:3]]
    paths = write_report(runs, out_dir, study_id=study_id, metric=f"{eval_name} {metric}", suite=suite,
                         commands=commands)
    tracker = Tracker(tracking_uri)
    run_id = tracker.create_run(f"study/arch/{study_id}", {
        "harness.stage": "study", "harness.study_id": study_id, "harness.study_kind": "arch",
        "harness.suite": suite, "harness.eval": eval_name, "harness.metric": metric,
        "harness.study_grid": json.dumps({"methods": methods, "backbones": backbones, "widths": widths, "seeds": seeds}),
    })
    for path in paths.values():
        tracker.log_artifact(run_id, path)
    tracker.finish(run_id)
    log(f"[harness] study report: {paths['report']} (MLflow run {run_id}; published by `harness leaderboard build`)")
    if failed:
        raise RunsFailed(failed, len(prepared), "study (the report shows the rest)")
    return paths["report"]


def _cfg(req: RunRequest):
    from harness.pipeline import build_config

    return build_config(req)[0]

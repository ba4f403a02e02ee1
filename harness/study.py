"""``harness study arch``: every method on every architecture and width, several seeds, then
the architecture-dependence report (leaderboard/study_report.py).

The grid runs through the launcher like any sweep (in-process, or one Slurm job array that
the study waits for); each run is tagged ``harness.study_id`` (and the sweep id). Widths are
the Revisiting study's filters factors k (Kolesnikov et al. 2019): ``backbone.width = k/4``,
so ``--widths 4`` is the standard network. The report (written by the function the caller
passes: the CLI passes the leaderboard's ``write_report``, since harness/ sits below the
leaderboard) is logged to its own MLflow run (stage ``study``) and published by
``harness leaderboard build``. The compared metric is the eval's declared headline unless
named, and its declared direction decides which method wins.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Callable

import pandas as pd

from harness import tags
from harness.data.base import DEFAULT_SUITE
from harness.errors import RunsFailed, UsageError
from harness.launch import LaunchOptions, new_id, submit_sweep, wait_all
from harness.metrics import Declaration
from harness.pipeline import RunRequest, rerun_args
from harness.rundir import RunFolder


def grid(methods, backbones, widths, seeds, *, suite, evals, epochs, overrides, tracking_uri, study_id,
         argv=()) -> list[RunRequest]:
    reqs = []
    for method, backbone, k, seed in itertools.product(methods, backbones, widths, seeds):
        if k <= 0:
            raise UsageError(f"--widths: {k} is not a positive filters factor (4 = the standard width)")
        extra = {**overrides, "backbone.width": k / 4}
        reqs.append(RunRequest(method=method, suite=suite, backbone=backbone, evals=evals, seed=seed, epochs=epochs,
                               tracking_uri=tracking_uri, overrides=extra, argv=list(argv),
                               tags={tags.STUDY_ID: study_id, tags.STUDY_WIDTH: k}))
    return reqs


def collect(reqs: list[RunRequest], eval_name: str, metric: str | None) -> tuple[pd.DataFrame, list[RunRequest], Declaration | None]:
    """The finished runs' scores of ``metric`` (None: the eval's headline), the runs without
    an ``eval_name`` result, and the eval's metric declaration as the runs recorded it."""
    rows, missing, declaration = [], [], None
    for r in reqs:
        saved = RunFolder(r.output_dir).results() or {}
        results = saved.get("results", {})
        if eval_name not in results:
            missing.append(r)
            continue
        declaration = declaration or Declaration.from_dict(saved.get("declarations", {}).get(eval_name))
        name = metric or (declaration.headline if declaration else None)
        if name not in results[eval_name]:
            raise UsageError(f"--metric {name}: eval '{eval_name}' reports {', '.join(sorted(results[eval_name]))}")
        rows.append({"method": r.method, "backbone": r.backbone, "width": r.tags[tags.STUDY_WIDTH],
                     "seed": r.seed, "score": float(results[eval_name][name])})
    return pd.DataFrame(rows, columns=["method", "backbone", "width", "seed", "score"]), missing, declaration


def run_arch_study(methods, backbones, widths, seeds, *, write_report: Callable[..., dict], suite=DEFAULT_SUITE,
                   evals="linear", epochs=None, overrides=None, tracking_uri=None, opts: LaunchOptions | None = None,
                   out_dir=None, metric: str | None = None, log=print, argv=()) -> Path:
    """``write_report(runs, out_dir, study_id=, metric=, suite=, commands=, higher_is_better=)``
    -> {name: path} with at least ``report`` (leaderboard.study_report.write_report)."""
    from harness.tracking import Tracker, default_tracking_uri

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
    runs, missing, declaration = collect(prepared, eval_name, metric)
    metric = metric or (declaration.headline if declaration else "?")
    spec = declaration.get(metric) if declaration else None
    higher = spec.higher_is_better if spec else True
    known = {d for d, _ in failed}
    failed += [(str(r.output_dir), f"no {eval_name} result") for r in missing if str(r.output_dir) not in known]
    if runs.empty:
        raise RunsFailed(failed, len(prepared), "study")
    out_dir = Path(out_dir or Path("runs") / "studies" / study_id).resolve()
    commands = [" ".join(["harness", *rerun_args(r, _cfg(r), Path(r.output_dir), [eval_name])]) for r in prepared[:3]]
    label = f"{eval_name} {metric}" + ("" if higher else " (lower is better)")
    paths = write_report(runs, out_dir, study_id=study_id, metric=label, suite=suite, commands=commands,
                         higher_is_better=higher)
    tracker = Tracker(tracking_uri)
    run_id = tracker.create_run(f"study/arch/{study_id}", {
        tags.STAGE: tags.STAGE_STUDY, tags.STUDY_ID: study_id, tags.STUDY_KIND: "arch",
        tags.SUITE: suite, tags.EVAL: eval_name, tags.STUDY_METRIC: metric,
        tags.STUDY_DIRECTION: "higher" if higher else "lower",
        tags.STUDY_GRID: json.dumps({"methods": methods, "backbones": backbones, "widths": widths, "seeds": seeds}),
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

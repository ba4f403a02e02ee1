"""Read evaluation runs of the harness out of an MLflow tracking store."""

from __future__ import annotations

import os

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage

EXPERIMENT_NAME = "ssl-harness"
EVAL_FILTER = "tags.`harness.stage` = 'eval'"

# Tidy column -> MLflow tag it comes from.
TAG_COLUMNS: dict[str, str] = {
    "method": "harness.method",
    "recipe": "harness.recipe",
    "backbone": "harness.backbone",
    "width": "harness.width",
    "suite": "harness.suite",
    "seed": "harness.seed",
    "eval": "harness.eval",
    "protocol": "harness.protocol",
    "preset": "harness.preset",
    "config_hash": "harness.config_hash",
    "git_commit": "harness.git_commit",
    "epochs": "harness.epochs",
    "command": "harness.command",
    "parent_run_id": "mlflow.parentRunId",
}
HEADLINE_METRICS: tuple[str, ...] = ("top1", "top5")

_LEADING = ["method", "recipe", "backbone", "width", "suite", "seed", "eval", "protocol", "preset"]
_TRAILING = [
    "run_id",
    "parent_run_id",
    "start_time",
    "status",
    "config_hash",
    "git_commit",
    "epochs",
    "command",
]
COLUMNS: list[str] = _LEADING + list(HEADLINE_METRICS) + _TRAILING

def _missing_sqlite_file(tracking_uri: str) -> bool:
    # Opening a sqlite uri creates the database and runs migrations; a report
    # generator pointed at a mistyped path should not leave a fresh store behind.
    if not tracking_uri.startswith("sqlite:"):
        return False
    from sqlalchemy.engine import make_url

    database = make_url(tracking_uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return False
    return not os.path.exists(database)


def empty_frame() -> pd.DataFrame:
    frame = pd.DataFrame({col: pd.Series(dtype=object) for col in COLUMNS})
    frame["start_time"] = pd.Series(dtype="datetime64[us, UTC]")
    for metric in HEADLINE_METRICS:
        frame[metric] = pd.Series(dtype=float)
    return frame


def _row(run) -> dict:
    row = {column: run.data.tags.get(tag) for column, tag in TAG_COLUMNS.items()}
    row["run_id"] = run.info.run_id
    row["start_time"] = pd.Timestamp(run.info.start_time, unit="ms", tz="UTC")
    row["status"] = run.info.status
    for metric, value in run.data.metrics.items():
        # A metric named like an identity column (e.g. "seed") must not overwrite it.
        row[metric if metric not in row else f"metrics.{metric}"] = value
    return row


def eval_runs(tracking_uri: str) -> pd.DataFrame:
    """One row per evaluation run in experiment ``ssl-harness`` of ``tracking_uri``.

    Identity columns are the run's ``harness.*`` tags (strings, as MLflow stores them;
    missing tags are None), metric columns hold each metric's latest logged value,
    ``start_time`` is a UTC timestamp. Uses an explicit client: the process-global
    MLflow tracking uri is never touched.
    """
    if _missing_sqlite_file(tracking_uri):
        return empty_frame()
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None or experiment.lifecycle_stage == LifecycleStage.DELETED:
        return empty_frame()
    rows, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], EVAL_FILTER, max_results=1000, page_token=token)
        rows += [_row(run) for run in page]
        token = page.token
        if not token:
            break
    if not rows:
        return empty_frame()
    out = pd.DataFrame(rows)
    for metric in HEADLINE_METRICS:
        if metric not in out:
            out[metric] = float("nan")
    extra = sorted(c for c in out.columns if c not in COLUMNS)
    return out[_LEADING + list(HEADLINE_METRICS) + extra + _TRAILING].reset_index(drop=True)


def study_runs(tracking_uri: str) -> list:
    """The finished study runs (``harness.stage = study``), newest first."""
    if _missing_sqlite_file(tracking_uri):
        return []
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None or experiment.lifecycle_stage == LifecycleStage.DELETED:
        return []
    return list(client.search_runs([experiment.experiment_id], "tags.`harness.stage` = 'study'",
                                   order_by=["attributes.start_time DESC"], max_results=1000))

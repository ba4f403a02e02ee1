"""Read evaluation runs of the harness out of an MLflow tracking store."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage
from mlflow.tracking._tracking_service import utils as _tracking_utils

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

_ENV_VAR = "MLFLOW_TRACKING_URI"
# mlflow.search_runs only reads the process-global tracking uri; the lock keeps two
# concurrent queries in this process from restoring each other's uri.
_URI_LOCK = threading.Lock()


@contextmanager
def _scoped_tracking_uri(uri: str) -> Iterator[None]:
    # mlflow.get_tracking_uri() cannot be used as the value to restore: it resolves
    # "unset" into a concrete default (and would pin it), and set_tracking_uri() also
    # writes/unsets MLFLOW_TRACKING_URI in os.environ, so both are saved verbatim.
    with _URI_LOCK:
        saved_global = _tracking_utils._tracking_uri
        saved_env = os.environ.get(_ENV_VAR)
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved_global)
            if saved_env is None:
                os.environ.pop(_ENV_VAR, None)
            else:
                os.environ[_ENV_VAR] = saved_env


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


def _tidy(raw: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=raw.index)
    for column, tag in TAG_COLUMNS.items():
        out[column] = raw.get(f"tags.{tag}", pd.Series(None, index=raw.index, dtype=object))
    for column in ("run_id", "start_time", "status"):
        out[column] = raw[column]

    metric_names = sorted(c[len("metrics.") :] for c in raw.columns if c.startswith("metrics."))
    for metric in HEADLINE_METRICS:
        out[metric] = raw.get(f"metrics.{metric}", pd.Series(float("nan"), index=raw.index))
    extra = []
    for metric in metric_names:
        if metric in HEADLINE_METRICS:
            continue
        # A metric named like an identity column (e.g. "seed") must not overwrite it.
        name = metric if metric not in out.columns else f"metrics.{metric}"
        out[name] = raw[f"metrics.{metric}"]
        extra.append(name)

    ordered = _LEADING + list(HEADLINE_METRICS) + extra + _TRAILING
    return out[ordered].reset_index(drop=True)


def eval_runs(tracking_uri: str) -> pd.DataFrame:
    """One row per evaluation run in experiment ``ssl-harness`` of ``tracking_uri``.

    Identity columns are the run's ``harness.*`` tags (strings, as MLflow stores
    them; missing tags are NA), metric columns hold each metric's latest logged
    value, ``start_time`` is a UTC timestamp. The process-global MLflow tracking
    uri (and ``MLFLOW_TRACKING_URI``) is left as it was found.
    """
    if _missing_sqlite_file(tracking_uri):
        return empty_frame()

    experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None or experiment.lifecycle_stage == LifecycleStage.DELETED:
        return empty_frame()

    with _scoped_tracking_uri(tracking_uri):
        raw = mlflow.search_runs(
            experiment_names=[EXPERIMENT_NAME],
            filter_string=EVAL_FILTER,
            output_format="pandas",
        )
    if raw.empty:
        # search_runs drops every tags./metrics. column when nothing matches.
        return empty_frame()
    return _tidy(raw)

"""Read evaluation runs of the harness out of an MLflow tracking store."""

from __future__ import annotations

import os

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage

from harness import tags

EXPERIMENT_NAME = tags.EXPERIMENT
EVAL_FILTER = tags.stage_filter(tags.STAGE_EVAL)
STUDY_FILTER = tags.stage_filter(tags.STAGE_STUDY)

# Tidy column -> MLflow tag it comes from.
TAG_COLUMNS: dict[str, str] = {
    "method": tags.METHOD,
    "recipe": tags.RECIPE,
    "backbone": tags.BACKBONE,
    "width": tags.WIDTH,
    "suite": tags.SUITE,
    "seed": tags.SEED,
    "eval": tags.EVAL,
    "protocol": tags.PROTOCOL,
    "preset": tags.PRESET,
    "config_hash": tags.CONFIG_HASH,
    "git_commit": tags.GIT_COMMIT,
    "epochs": tags.EPOCHS,
    "command": tags.COMMAND,
    "parent_run_id": tags.PARENT_RUN,
    # The eval's metric declarations (raw JSON, see harness.metrics.Declaration): which
    # metrics it reports, which direction is better, and its headline. The leaderboard
    # ranks by these, never by metric names it would otherwise have to guess.
    "metrics_declaration": tags.METRICS,
}
DECLARATION_COLUMN = "metrics_declaration"

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
    DECLARATION_COLUMN,
]
# Identity and bookkeeping columns only: which metrics exist is up to each eval.
COLUMNS: list[str] = _LEADING + _TRAILING
_RESERVED = frozenset(COLUMNS)


def metric_column(name: str) -> str:
    """The column holding metric ``name``: its own name, unless that is an identity column
    (a metric called e.g. "seed" must not overwrite the run's seed)."""
    return f"metrics.{name}" if name in _RESERVED else name


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
    return frame


def _row(run) -> dict:
    row = {column: run.data.tags.get(tag) for column, tag in TAG_COLUMNS.items()}
    row["run_id"] = run.info.run_id
    row["start_time"] = pd.Timestamp(run.info.start_time, unit="ms", tz="UTC")
    row["status"] = run.info.status
    for metric, value in run.data.metrics.items():
        row[metric_column(metric)] = value
    return row


def _experiment_id(client: MlflowClient) -> str | None:
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None or experiment.lifecycle_stage == LifecycleStage.DELETED:
        return None
    return experiment.experiment_id


def eval_runs(tracking_uri: str) -> pd.DataFrame:
    """One row per evaluation run in experiment ``ssl-harness`` of ``tracking_uri``.

    Identity columns are the run's harness tags (strings, as MLflow stores them; missing
    tags are None), then one column per metric logged by any run (its latest value; NaN
    where a run did not log it), then bookkeeping columns, ending with
    ``metrics_declaration`` (the eval's raw JSON declaration, None when the run has none).
    ``start_time`` is a UTC timestamp. Uses an explicit client: the process-global MLflow
    tracking uri is never touched.
    """
    if _missing_sqlite_file(tracking_uri):
        return empty_frame()
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client)
    if experiment_id is None:
        return empty_frame()
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], EVAL_FILTER, max_results=1000, page_token=token)
        rows += [_row(run) for run in page]
        token = page.token
        if not token:
            break
    if not rows:
        return empty_frame()
    out = pd.DataFrame(rows)
    for column in TAG_COLUMNS:
        # pandas infers a string dtype that turns a missing tag into NaN; keep None as documented.
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    metrics = sorted(c for c in out.columns if c not in _RESERVED)
    return out[_LEADING + metrics + _TRAILING].reset_index(drop=True)


def study_runs(tracking_uri: str) -> list:
    """The finished study runs (stage ``study``), newest first."""
    if _missing_sqlite_file(tracking_uri):
        return []
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client)
    if experiment_id is None:
        return []
    return list(client.search_runs([experiment_id], STUDY_FILTER,
                                   order_by=["attributes.start_time DESC"], max_results=1000))

"""Read evaluation runs of the harness out of an MLflow tracking store."""

from __future__ import annotations

import os

from types import SimpleNamespace

import pandas as pd

from harness import tags
from leaderboard.store_sql import SqlStore, is_database

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
    # What an entry page shows: the family and baseline role (filters, floor/ceiling rows),
    # the seedless config id (one command's seeds are one config) and the provenance.
    "method_family": tags.METHOD_FAMILY,
    "baseline": tags.BASELINE,
    "config_id": tags.CONFIG_ID,
    "git_dirty": tags.GIT_DIRTY,
    "versions": tags.VERSIONS,
    "device": tags.DEVICE,
    "dataset_hash": tags.DATASET_HASH,
    "slurm_job_id": tags.SLURM_JOB_ID,
    "output_dir": tags.OUTPUT_DIR,
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
    "method_family",
    "baseline",
    "config_id",
    "git_dirty",
    "versions",
    "device",
    "dataset_hash",
    "slurm_job_id",
    "output_dir",
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


def MlflowClient(tracking_uri: str):  # noqa: N802 - imported on use: mlflow takes 1.4 s to import
    from mlflow import MlflowClient as Client

    return Client(tracking_uri=tracking_uri)


def _experiment_id(client) -> str | None:
    from mlflow.entities import LifecycleStage

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
    ``start_time`` is a UTC timestamp. Database stores are read with set-wise SQL
    (``leaderboard.store_sql``), others through an explicit client: the process-global
    MLflow tracking uri is never touched.
    """
    if _missing_sqlite_file(tracking_uri):
        return empty_frame()
    if is_database(tracking_uri):
        rows = _sql_rows(tracking_uri)
    else:
        rows = _client_rows(tracking_uri)
    if not rows:
        return empty_frame()
    return _frame(rows)


def _frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    for column in TAG_COLUMNS:
        if column not in out.columns:
            out[column] = None
        # pandas infers a string dtype that turns a missing tag into NaN; keep None as documented.
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    metrics = sorted(c for c in out.columns if c not in _RESERVED)
    return out[_LEADING + metrics + _TRAILING].sort_values("run_id", kind="stable").reset_index(drop=True)


def _client_rows(tracking_uri: str) -> list[dict]:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client)
    if experiment_id is None:
        return []
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], EVAL_FILTER, max_results=1000, page_token=token)
        rows += [_row(run) for run in page]
        token = page.token
        if not token:
            break
    return rows


def _sql_rows(tracking_uri: str) -> list[dict]:
    store = SqlStore(tracking_uri, EXPERIMENT_NAME)
    if store.experiment_id is None:
        return []
    runs = store.runs(tags.STAGE, tags.STAGE_EVAL)
    if runs.empty:
        return []
    wanted = {tag: column for column, tag in TAG_COLUMNS.items()}
    run_tags = store.tags(tags.STAGE, tags.STAGE_EVAL)
    run_tags = run_tags[run_tags["key"].isin(wanted)]
    by_run: dict[str, dict] = {r: {} for r in runs["run_id"].tolist()}
    # Columns as Python lists (one conversion each), not row tuples of Arrow-backed strings.
    for run_id, key, value in zip(*(run_tags[c].tolist() for c in ("run_id", "key", "value"))):
        by_run[run_id][wanted[key]] = value
    metrics = store.latest_metrics(tags.STAGE, tags.STAGE_EVAL)
    for run_id, key, value in zip(*(metrics[c].tolist() for c in ("run_id", "key", "value"))):
        by_run[run_id][metric_column(key)] = value
    rows = []
    for run_id, start, status in zip(*(runs[c].tolist() for c in ("run_id", "start_time", "status"))):
        row = {column: None for column in TAG_COLUMNS}
        row.update(by_run[run_id])
        row.update(run_id=run_id, start_time=pd.Timestamp(int(start), unit="ms", tz="UTC"), status=status)
        rows.append(row)
    return rows


def study_runs(tracking_uri: str) -> list:
    """The study runs (stage ``study``), newest first: objects with ``info.run_id``,
    ``info.artifact_uri`` and ``data.tags``, as MLflow's client returns them."""
    if _missing_sqlite_file(tracking_uri):
        return []
    if is_database(tracking_uri):
        store = SqlStore(tracking_uri, EXPERIMENT_NAME)
        if store.experiment_id is None:
            return []
        runs = store.runs(tags.STAGE, tags.STAGE_STUDY).sort_values("start_time", ascending=False)
        all_tags = store.tags(tags.STAGE, tags.STAGE_STUDY)
        by_run: dict[str, dict] = {}
        for run_id, key, value in zip(*(all_tags[c].tolist() for c in ("run_id", "key", "value"))):
            by_run.setdefault(run_id, {})[key] = value
        return [SimpleNamespace(info=SimpleNamespace(run_id=r, artifact_uri=a), data=SimpleNamespace(tags=by_run.get(r, {})))
                for r, a in zip(runs["run_id"].tolist(), runs["artifact_uri"].tolist())]
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client)
    if experiment_id is None:
        return []
    return list(client.search_runs([experiment_id], STUDY_FILTER,
                                   order_by=["attributes.start_time DESC"], max_results=1000))


def pretrain_runs(tracking_uri: str) -> dict[str, dict]:
    """Every pretraining run (the parent of an entry's evals): run id -> its config values
    (``params``), ``artifact_uri`` and pretraining loss by step (``loss``)."""
    if _missing_sqlite_file(tracking_uri):
        return {}
    pretrain = tags.STAGE_PRETRAIN
    if is_database(tracking_uri):
        store = SqlStore(tracking_uri, EXPERIMENT_NAME)
        if store.experiment_id is None:
            return {}
        out = {r: {"params": {}, "artifact_uri": a, "loss": []}
               for r, _, _, a in store.runs(tags.STAGE, pretrain).itertuples(index=False)}
        params = store.params(tags.STAGE, pretrain)
        for run_id, group in params.groupby("run_id", sort=False):
            if run_id in out:
                out[run_id]["params"] = dict(zip(group["key"], group["value"]))
        history = store.history(tags.STAGE, pretrain, tags.TRAIN_LOSS)
        for run_id, values in history.groupby("run_id", sort=False)["value"]:
            if run_id in out:
                out[run_id]["loss"] = values.astype(float).tolist()
        return out
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client)
    if experiment_id is None:
        return {}
    out, token = {}, None
    while True:
        page = client.search_runs([experiment_id], tags.stage_filter(pretrain), max_results=1000, page_token=token)
        for run in page:
            history = client.get_metric_history(run.info.run_id, tags.TRAIN_LOSS)
            out[run.info.run_id] = {"params": dict(run.data.params), "artifact_uri": run.info.artifact_uri,
                                    "loss": [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]}
        token = page.token
        if not token:
            break
    return out


def experiment_id(tracking_uri: str) -> str | None:
    if _missing_sqlite_file(tracking_uri):
        return None
    return _experiment_id(MlflowClient(tracking_uri=tracking_uri))

"""The one MLflow wrapper: explicit run ids, params once at creation, metrics in batches.

Never uses MLflow's implicit active run, so a process can hold a parent run and several
child runs at once without one leaking into another.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import urllib.request
from pathlib import Path

from harness.errors import UsageError

EXPERIMENT = "ssl-harness"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PARAM_BATCH = 100


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _quiet() -> None:
    for name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_reachable(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except OSError as e:
            raise UsageError(f"tracking server {uri} is unreachable ({e}); start it with `mlflow server` or fix --tracking-uri")


class Tracker:
    def __init__(self, uri: str | None = None, experiment: str = EXPERIMENT):
        _quiet()
        from mlflow.tracking import MlflowClient

        self.uri = uri or default_tracking_uri()
        check_reachable(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///"):
                # Keep artifacts beside the database, not in whatever directory the first run used.
                location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except Exception:  # another process created it first
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id

    def create_run(self, name: str, tags: dict[str, str], params: dict | None = None, parent_id: str | None = None) -> str:
        from mlflow.entities import Param

        tags = {k: str(v) for k, v in tags.items()}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted((params or {}).items())]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(run_id, params=items[i:i + _PARAM_BATCH])
        return run_id

    def run_exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        """rows: (step, {name: value}); sent in as few calls as MLflow allows, with retries so
        a tracking server that blinks does not kill a training job."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for step, d in rows for k, v in d.items()]
        for i in range(0, len(metrics), _BATCH):
            self._retry(lambda chunk=metrics[i:i + _BATCH]: self.client.log_batch(run_id, metrics=chunk))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    @contextlib.contextmanager
    def running(self, run_id: str):
        """Marks the run FINISHED on success, KILLED on Ctrl-C, FAILED on any other error."""
        try:
            yield
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or a preempted job exiting to be requeued
            self.finish(run_id, "KILLED")
            raise
        except BaseException:
            self.finish(run_id, "FAILED")
            raise
        self.finish(run_id)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self._retry(lambda: self.client.set_terminated(run_id, status))

    @staticmethod
    def _retry(fn, attempts: int = 5, delay: float = 1.0):
        for i in range(attempts):
            try:
                return fn()
            except Exception as e:  # network errors surface as many exception types
                if i == attempts - 1:
                    logging.getLogger("harness").warning("tracking call failed after %d attempts: %s", attempts, e)
                    return None
                time.sleep(delay * 2 ** i)

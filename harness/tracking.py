"""The one MLflow wrapper: explicit run ids, params once at creation, metrics in batches.

Many concurrent jobs log to one ``mlflow server`` (``--tracking-uri http://host:port``); a
server that is unreachable when a run starts is an error before anything runs, one that is
lost mid-run costs no metric and never stops training (see ``log_metrics``).

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
from harness.tags import EXPERIMENT
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
        # MLflow's own HTTP retries (7, exponential, 120 s timeouts) would hold training for
        # minutes on every call while a server is away; this wrapper keeps and re-sends
        # metrics itself, so each call gives up fast. A user's explicit setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self._pending: list[tuple[str, list]] = []  # metric batches not yet taken by the server
        self._backoff, self._next_try = 0.0, 0.0
        self.spill_path: Path | None = None
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
        """rows: (step, {name: value}); sent in as few calls as MLflow allows.

        Never raises and never drops a metric: a batch the server does not take is kept, in
        order, and sent again on later calls once a backoff has passed (training does not wait
        for a server that went away), and at ``finish``/``flush``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for step, d in rows for k, v in d.items()]
        self._pending += [(run_id, metrics[i:i + _BATCH]) for i in range(0, len(metrics), _BATCH)]
        if time.monotonic() >= self._next_try:
            self._send_pending()

    def _send_pending(self) -> bool:
        while self._pending:
            run_id, chunk = self._pending[0]
            try:
                self.client.log_batch(run_id, metrics=chunk)
            except Exception as e:  # network errors surface as many exception types
                self._backoff = min(max(2 * self._backoff, 1.0), 60.0)
                self._next_try = time.monotonic() + self._backoff
                logging.getLogger("harness").warning(
                    "tracking server %s did not take %d metrics (%s); kept, retrying in %.0f s",
                    self.uri, sum(len(c) for _, c in self._pending), type(e).__name__, self._backoff)
                return False
            self._pending.pop(0)
        self._backoff, self._next_try = 0.0, 0.0
        return True

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send every kept metric, retrying with backoff for up to ``timeout_s`` (default
        ``HARNESS_TRACKING_FLUSH_S`` or 600 s); True when all were sent. What still cannot be
        sent is written to ``spill_path`` (JSON lines) when one is set, and sent by the next
        run that uses it."""
        timeout_s = float(os.environ.get("HARNESS_TRACKING_FLUSH_S", 600)) if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while self._pending:
            self._next_try = 0.0
            if self._send_pending():
                return True
            if time.monotonic() + self._backoff > deadline:
                break
            time.sleep(self._backoff)
        if not self._pending:
            return True
        if self.spill_path is not None:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spill_path, "a") as f:
                for run_id, chunk in self._pending:
                    for m in chunk:
                        f.write(json.dumps({"run_id": run_id, "key": m.key, "value": m.value,
                                            "timestamp": m.timestamp, "step": m.step}) + "\n")
            logging.getLogger("harness").warning("%d metrics could not be sent to %s; saved in %s, sent by the next "
                                                 "run of this command", sum(len(c) for _, c in self._pending),
                                                 self.uri, self.spill_path)
            self._pending = []
        return False

    def resend_spilled(self) -> int:
        """Send metrics an earlier process saved to ``spill_path``; returns how many."""
        from mlflow.entities import Metric

        if self.spill_path is None or not self.spill_path.exists():
            return 0
        rows = [json.loads(line) for line in self.spill_path.read_text().splitlines() if line.strip()]
        by_run: dict[str, list] = {}
        for r in rows:
            by_run.setdefault(r["run_id"], []).append(Metric(r["key"], r["value"], r["timestamp"], r["step"]))
        for run_id, metrics in by_run.items():
            self._pending += [(run_id, metrics[i:i + _BATCH]) for i in range(0, len(metrics), _BATCH)]
        self.spill_path.unlink()
        self.flush()
        return len(rows)

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
        self.flush()
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


class NullTracker:
    """The tracker of a run that tracks nothing (other DDP ranks, untracked tuning sweeps):
    the same calls, no store. Run ids it hands out exist only for the process's lifetime."""

    uri = "(not tracked)"

    def __init__(self):
        self.spill_path: Path | None = None
        self._runs: set[str] = set()

    def create_run(self, name: str, tags: dict, params: dict | None = None, parent_id: str | None = None) -> str:
        run_id = f"untracked-{len(self._runs)}"
        self._runs.add(run_id)
        return run_id

    def run_exists(self, run_id: str | None) -> bool:
        return run_id in self._runs

    def set_tags(self, run_id: str, tags: dict) -> None:
        pass

    def log_metrics(self, run_id: str, rows) -> None:
        pass

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        pass

    def resend_spilled(self) -> int:
        return 0

    def flush(self, timeout_s: float | None = None) -> bool:
        return True

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        pass

    @contextlib.contextmanager
    def running(self, run_id: str):
        yield

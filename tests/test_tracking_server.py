"""Many runs, one `mlflow server` on 127.0.0.1: concurrent runs lose no metric, and a server
that goes away mid-run costs neither a metric nor the training."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.tracking import Tracker
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = folder, port or _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> "MlflowServer":
        mlflow = Path(sys.executable).parent / "mlflow"
        # Two workers, not mlflow's default four: on a 2-core machine a start takes ~13 s, not ~22 s.
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "2",
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=open(self.folder / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=2).read()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited; see {self.folder / 'server.log'}")
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path).start()
    yield srv
    srv.stop()


def _history(client, run_id, key="train/loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_eight_concurrent_runs_log_every_metric(server, tmp_path):
    from mlflow.tracking import MlflowClient

    from harness.data.digits import DigitsSuite

    DigitsSuite(root=None, image_size=32).prepare()  # generated once, before the 8 processes read it
    tiny = [a for a in TINY if not a.startswith("data.train_subset")]
    procs = []
    for seed in range(8):
        cmd = [sys.executable, "-m", "harness.cli", "run", "--method", "rotation", "--eval", "knn", "--seed", str(seed),
               "--epochs", "2", "--tracking-uri", server.uri, "--output-dir", str(tmp_path / f"run{seed}"),
               *tiny, "data.train_subset=64", "train.log_every=1"]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
    errors = [p.communicate(timeout=900)[1].decode()[-2000:] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors

    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("ssl-harness").experiment_id])
    parents = [r for r in runs if r.data.tags["harness.stage"] == "pretrain"]
    evals = [r for r in runs if r.data.tags["harness.stage"] == "eval"]
    assert len(parents) == len(evals) == 8
    assert sorted(int(r.data.tags["harness.seed"]) for r in parents) == list(range(8))
    for r in parents:  # 64 images / batch 32 = 2 steps per epoch, 2 epochs, every step logged
        assert r.info.status == "FINISHED"
        for key in ("train/loss", "train/lr", "train/rotation_acc"):
            assert _history(client, r.info.run_id, key) == [1, 2, 3, 4], key
    for r in evals:
        assert r.info.status == "FINISHED"
        assert {"top1", "top5", "k10_top1", "k20_top1"} <= set(r.data.metrics)


def test_server_lost_mid_run_costs_no_metric_and_does_not_stop_logging(server, tmp_path):
    from mlflow.tracking import MlflowClient

    tracker = Tracker(server.uri)
    run = tracker.create_run("blink", {"harness.stage": "pretrain"})
    tracker.log_metrics(run, [(1, {"train/loss": 1.0})])
    server.stop()
    started = time.monotonic()
    for step in range(2, 6):  # the server is gone: kept, and training is not held up
        tracker.log_metrics(run, [(step, {"train/loss": float(step)})])
    assert time.monotonic() - started < 30
    assert len(tracker._pending) > 0
    server.proc = MlflowServer(server.folder, server.port).start().proc  # back, same port and store
    tracker.finish(run)  # flushes what was kept, with backoff
    client = MlflowClient(server.uri)
    assert _history(client, run) == [1, 2, 3, 4, 5]
    assert client.get_run(run).info.status == "FINISHED"


def test_metrics_a_dead_server_never_took_are_spilled_and_sent_later(server, tmp_path):
    from mlflow.tracking import MlflowClient

    tracker = Tracker(server.uri)
    tracker.spill_path = tmp_path / "unsent_metrics.jsonl"
    run = tracker.create_run("spill", {"harness.stage": "pretrain"})
    server.stop()
    tracker.log_metrics(run, [(s, {"train/loss": s / 10}) for s in range(1, 4)])
    assert tracker.flush(timeout_s=0) is False
    assert len(tracker.spill_path.read_text().splitlines()) == 3

    server.proc = MlflowServer(server.folder, server.port).start().proc
    later = Tracker(server.uri)
    later.spill_path = tracker.spill_path
    assert later.resend_spilled() == 3
    assert not later.spill_path.exists()
    assert _history(MlflowClient(server.uri), run) == [1, 2, 3]

"""Whole runs through the CLI: determinism, resume after SIGKILL, tracking, leaderboard."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main
from tests.conftest import TINY

BASE = ["run", "--method", "cpc_v2", "--epochs", "1"]


def results(out_dir: Path) -> dict:
    return json.loads((out_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference_run(workdir):
    """One uninterrupted tiny run, shared by the tests below."""
    out = workdir / "ref"
    os.environ["SSL_HARNESS_DATA"] = str(workdir.parent / "data-cache")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert main(BASE + ["--output-dir", str(out), "--tracking-uri", uri, *TINY]) == 0
    return out, uri


def test_run_produces_metrics_tracking_and_artifacts(reference_run):
    out, uri = reference_run
    r = results(out)
    # --eval defaults to all: every eval the default suite (glyphs) supports, detection and
    # robustness included.
    assert set(r["results"]) == {"linear", "knn", "linear_fast", "semi_supervised", "detection", "robustness"}
    for name, m in r["results"].items():
        if name == "detection":
            assert 0.0 <= m["AP"] <= m["AP50"] <= 100.0
        elif name == "robustness":
            assert 0.0 <= m["clean_error"] <= 100.0 and 0.0 <= m["mean_error"] <= 100.0
        else:
            assert 0.0 <= m["top1"] <= m["top5"] <= 100.0
    assert len(r["pretrain_loss"]) == 6  # 192 images / batch 32, one epoch
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ssl-harness")
    runs = client.search_runs([exp.experiment_id])
    parent = next(x for x in runs if x.data.tags["harness.stage"] == "pretrain")
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {c.data.tags["harness.eval"] for c in children} == {"linear", "knn", "linear_fast", "semi_supervised",
                                                              "detection", "robustness"}
    assert {c.data.tags["harness.protocol"] for c in children} == {"linear", "knn", "linear_fast", "semi_supervised",
                                                                   "detection transfer", "robustness"}
    detection = next(c for c in children if c.data.tags["harness.eval"] == "detection")
    assert detection.data.tags["harness.preset"] == "voc_c4/torchvision"
    knn = next(c for c in children if c.data.tags["harness.eval"] == "knn")
    assert knn.data.metrics["top1"] == pytest.approx(r["results"]["knn"]["top1"])
    assert knn.data.tags["harness.preset"] == "dino"
    tags = parent.data.tags
    for key in ("harness.git_commit", "harness.versions", "harness.device", "harness.dataset_hash",
                "harness.config_hash", "harness.seed", "harness.backbone", "harness.command"):
        assert tags.get(key), key
    assert tags["harness.command"].startswith("harness run --method cpc_v2")
    # The device names the CPU kernels and threads: the same seed is bit-identical only on the same.
    kernels, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    assert tags["harness.device"].endswith(f":{kernels}:{threads} threads")
    assert "data.train_subset=192" in tags["harness.command"]
    assert tags["harness.invocation"].startswith("harness run --method cpc_v2 --epochs 1 --output-dir")
    assert len(client.get_metric_history(parent.info.run_id, "train/loss")) == 6
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "backbone.pt", "loss.png"} <= artifacts
    assert (out / "pretrain" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config_hash"] == tags["harness.config_hash"]
    assert cfg["sources"]["data.train_subset"] == "command line"


def test_same_seed_identical_other_seed_differs(reference_run, workdir):
    out, uri = reference_run
    again = workdir / "again"
    assert main(BASE + ["--output-dir", str(again), "--tracking-uri", uri, *TINY]) == 0
    assert results(again)["results"] == results(out)["results"]
    assert results(again)["pretrain_loss"] == results(out)["pretrain_loss"]
    other = workdir / "seed1"
    assert main(BASE + ["--seed", "1", "--eval", "knn", "--output-dir", str(other), "--tracking-uri", uri, *TINY]) == 0
    assert results(other)["pretrain_loss"] != results(out)["pretrain_loss"]


def test_rerun_in_same_dir_skips_finished_stages(reference_run, capsys):
    out, uri = reference_run
    before = (out / "results.json").read_text()
    assert main(BASE + ["--output-dir", str(out), "--tracking-uri", uri, *TINY]) == 0
    log = capsys.readouterr().out
    assert "pretraining already finished" in log and "already finished: cached" in log
    assert json.loads(before)["results"] == results(out)["results"]


def test_different_config_in_same_dir_is_refused(reference_run, capsys):
    out, uri = reference_run
    assert main(BASE + ["--output-dir", str(out), "--tracking-uri", uri, *TINY, "train.lr=0.5"]) == 2
    assert "different config" in capsys.readouterr().err


def test_sigkill_mid_pretraining_then_resume_equals_uninterrupted(reference_run, workdir):
    out, uri = reference_run
    killed = workdir / "killed"
    cmd = [sys.executable, "-m", "harness.cli", *BASE, "--output-dir", str(killed), "--tracking-uri", uri, *TINY,
           "train.checkpoint_every=2"]
    env = {**os.environ, "SSL_HARNESS_DATA": str(workdir.parent / "data-cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not ckpt.exists():
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "pretrain" / "method.pt").exists(), "kill came after pretraining ended"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming pretraining" in r.stdout
    assert results(killed)["pretrain_loss"] == results(out)["pretrain_loss"]
    assert results(killed)["results"] == results(out)["results"]


def test_leaderboard_shows_the_run(reference_run, workdir, capsys):
    out, uri = reference_run
    site = workdir / "site"
    assert main(["leaderboard", "build", "--tracking-uri", uri, "--output-dir", str(site)]) == 0
    html = (site / "index.html").read_text()
    assert "cpc_v2" in html and "resnet_small" in html
    # Only seed 0 has a linear result (other seeds here ran kNN only), so the cell is its value.
    linear_top1 = results(out)["results"]["linear"]["top1"]
    assert f"{linear_top1:.1f}" in html
    assert str(site / "index.html") in capsys.readouterr().out


def test_loader_workers_do_not_change_results(reference_run, workdir):
    out, uri = reference_run
    workers = workdir / "workers"
    assert main(BASE + ["--eval", "knn", "--output-dir", str(workers), "--tracking-uri", uri, *TINY, "data.num_workers=2"]) == 0
    assert results(workers)["pretrain_loss"] == results(out)["pretrain_loss"]
    assert results(workers)["results"]["knn"] == results(out)["results"]["knn"]


def test_reconstruction_method_logs_an_image_grid(workdir):
    out = workdir / "dae"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert main(["run", "--method", "denoising_ae", "--epochs", "1", "--eval", "knn", "--output-dir", str(out),
                 "--tracking-uri", uri, *TINY]) == 0
    png = out / "pretrain" / "reconstructions.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(uri)
    run_id = json.loads((out / "state.json").read_text())["parent_run_id"]
    assert "reconstructions.png" in {a.path for a in client.list_artifacts(run_id)}

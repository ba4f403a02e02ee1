"""`--launcher slurm` and `harness sweep` on a real single-node Slurm cluster (Debian's
slurm-wlm and munge), started for this module and stopped after it."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.launch import read_jobs
from tests.conftest import TINY
from tests.slurm_cluster import SlurmCluster, unavailable_reason

pytestmark = pytest.mark.slurm

TINY_RUN = ["--method", "rotation", "--eval", "knn", "--cpus-per-task", "1", "--time", "30", *TINY]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)  # for submitit's sbatch/squeue calls
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _runs(uri, stage=None):
    c = _client(uri)
    exp = c.get_experiment_by_name("ssl-harness")
    runs = c.search_runs([exp.experiment_id]) if exp else []
    return [r for r in runs if stage is None or r.data.tags.get("harness.stage") == stage]


def test_run_on_slurm_is_tracked_with_its_job_ids(slurm, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs_dir = tmp_path / "jobs"
    out = tmp_path / "run"
    assert main(["run", *TINY_RUN, "--launcher", "slurm", "--wait", "--output-dir", str(out), "--tracking-uri", uri,
                 "--jobs-dir", str(jobs_dir)]) == 0
    printed = capsys.readouterr().out
    rows = read_jobs(jobs_dir)
    # One job per stage, the eval after the pretraining.
    assert [r["stage"] for r in rows] == ["pretrain", "eval:knn"]
    for r in rows:
        assert f"submitted slurm job {r['job_id']} ({r['stage']}); log: {r['stdout']}" in printed
    pretrain_id, eval_id = (r["job_id"] for r in rows)
    (parent,) = _runs(uri, "pretrain")
    (child,) = _runs(uri, "eval")
    assert parent.data.tags["harness.slurm_job_id"] == pretrain_id
    assert child.data.tags["harness.slurm_job_id"] == eval_id
    assert parent.info.status == child.info.status == "FINISHED"
    assert "k20_top1" in child.data.metrics and "train/loss" in parent.data.metrics
    # The jobs ran the code snapshot taken at submission, not the live checkout.
    snapshots = jobs_dir.resolve() / "snapshots"
    assert Path(parent.data.tags["harness.code_dir"]).parent == snapshots

    assert main(["status", "--jobs-dir", str(jobs_dir)]) == 0
    status = capsys.readouterr().out
    assert status.count("COMPLETED") == 2 and pretrain_id in status

    # Every stage's output exists for this config hash: nothing is submitted again.
    assert main(["run", *TINY_RUN, "--launcher", "slurm", "--output-dir", str(out), "--tracking-uri", uri,
                 "--jobs-dir", str(jobs_dir)]) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert len(read_jobs(jobs_dir)) == 2


def test_three_seed_sweep_is_one_job_array(slurm, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the runs' default output directories go under ./runs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs_dir = tmp_path / "jobs"
    assert main(["sweep", "--methods", "rotation", "--seeds", "0,1,2", "--epochs", "1", "--eval", "knn",
                 "--launcher", "slurm", "--cpus-per-task", "1", "--time", "30", "--wait", "--tracking-uri", uri,
                 "--jobs-dir", str(jobs_dir), *TINY]) == 0
    rows = read_jobs(jobs_dir)
    assert len(rows) == 3
    arrays = {r["job_id"].split("_")[0] for r in rows}
    assert len(arrays) == 1, rows  # one sbatch: one array id, tasks _0 _1 _2
    assert sorted(r["job_id"].split("_")[1] for r in rows) == ["0", "1", "2"]
    sweep_id = rows[0]["sweep_id"]
    parents = _runs(uri, "pretrain")
    assert len(parents) == 3
    assert {r.data.tags["harness.sweep_id"] for r in parents} == {sweep_id}
    assert sorted(r.data.tags["harness.seed"] for r in parents) == ["0", "1", "2"]
    assert {r.data.tags["harness.slurm_job_id"] for r in parents} == {r["job_id"] for r in rows}
    assert all(r.info.status == "FINISHED" for r in parents)
    assert len([r for r in _runs(uri, "eval") if "top1" in r.data.metrics]) == 3


def _squeue(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def _metric_steps(uri, run_id) -> list[int]:
    return [m.step for m in _client(uri).get_metric_history(run_id, "train/loss")]


def test_requeued_job_resumes_and_ends_like_an_uninterrupted_run(slurm, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs_dir = tmp_path / "jobs"
    cfg = [*TINY_RUN, "train.epochs=4", "train.checkpoint_every=1000", "train.log_every=1"]  # 24 steps
    ref = tmp_path / "uninterrupted"
    assert main(["run", *cfg, "--output-dir", str(ref), "--tracking-uri", f"sqlite:///{tmp_path / 'ref.db'}"]) == 0

    out = tmp_path / "preempted"
    assert main(["run", *cfg, "--launcher", "slurm", "--output-dir", str(out), "--tracking-uri", uri,
                 "--jobs-dir", str(jobs_dir)]) == 0
    pretrain = read_jobs(jobs_dir)[0]
    assert pretrain["stage"] == "pretrain"
    job = pretrain["job_id"]
    run_id = None
    deadline = time.time() + 300
    while time.time() < deadline:  # until a few steps are logged
        state = out / "state.json"
        run_id = json.loads(state.read_text())["parent_run_id"] if state.exists() else None
        if run_id and len(_metric_steps(uri, run_id)) >= 4:
            break
        time.sleep(0.5)
    assert run_id, "the pretraining job never started"
    # Slurm's warning before preemption or a time limit: USR2 to the job's processes.
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    deadline = time.time() + 120
    while _squeue(job) != "PENDING" and time.time() < deadline:
        time.sleep(0.5)
    assert _squeue(job) == "PENDING", "the job was not requeued"
    ckpt = out / "checkpoints" / "last.pt"
    assert ckpt.exists()  # written at the step boundary (checkpoint_every=1000 never fires)
    # A requeued job waits out Slurm's begin-time delay; release it now.
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)

    from harness.launch import wait
    from submitit import SlurmJob

    wait([SlurmJob(folder=str(jobs_dir.resolve() / "%j"), job_id=r["job_id"]) for r in read_jobs(jobs_dir)])
    got = json.loads((out / "results.json").read_text())
    want = json.loads((ref / "results.json").read_text())
    assert got["pretrain_loss"] == want["pretrain_loss"]  # bit for bit on CPU
    assert got["results"] == want["results"]
    (parent,) = _runs(uri, "pretrain")
    assert parent.info.run_id == run_id  # the same MLflow run, resumed
    resumed_at = int(parent.data.tags["harness.resumed_from_step"])
    assert 4 <= resumed_at < 24
    assert parent.info.status == "FINISHED"
    assert sorted(set(_metric_steps(uri, run_id))) == list(range(1, 25))  # no step's metrics lost
    log = Path(pretrain["stdout"]).read_text()
    assert f"resuming pretraining from {ckpt}" in log


def test_waiting_on_a_cancelled_run_is_an_error_not_a_hang(slurm, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs_dir = tmp_path / "jobs"
    assert main(["run", *TINY_RUN, "train.epochs=50", "--launcher", "slurm", "--output-dir", str(tmp_path / "run"),
                 "--tracking-uri", uri, "--jobs-dir", str(jobs_dir)]) == 0
    rows = read_jobs(jobs_dir)
    subprocess.run(["scancel", rows[0]["job_id"]], check=True)  # the pretraining; the eval now waits forever

    from harness.launch import wait
    from harness.errors import RunFailed
    from submitit import SlurmJob

    started = time.time()
    with pytest.raises(RunFailed, match="ended without a result"):
        wait([SlurmJob(folder=str(jobs_dir.resolve() / "%j"), job_id=r["job_id"]) for r in rows], poll_s=0.5)
    assert time.time() - started < 120
    assert main(["status", "--jobs-dir", str(jobs_dir)]) == 0
    status = capsys.readouterr().out
    pretrain_line = next(line for line in status.splitlines() if line.startswith(rows[0]["job_id"] + " "))
    assert "CANCELLED" in pretrain_line or "ENDED" in pretrain_line


def test_arch_study_runs_as_one_job_array_and_reports(slurm, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs_dir = tmp_path / "jobs"
    assert main(["study", "arch", "--methods", "rotation,simclr", "--backbones", "resnet_small,revnet50",
                 "--widths", "1", "--seeds", "1", "--eval", "linear", "--launcher", "slurm", "--cpus-per-task", "1", "--time", "30",
                 "--tracking-uri", uri, "--jobs-dir", str(jobs_dir),
                 "data.train_subset=64", "train.batch_size=32", "train.epochs=1", "train.warmup_epochs=0",
                 "eval.linear.epochs=1", "eval.linear.milestones=[]"]) == 0
    out = capsys.readouterr().out
    rows = read_jobs(jobs_dir)
    assert len(rows) == 4 and len({r["job_id"].split("_")[0] for r in rows}) == 1  # one sbatch
    assert "waiting for 4 jobs" in out
    (report,) = (tmp_path / "runs" / "studies").glob("*/report.html")
    html = report.read_text()
    assert "Kendall" in html and "simclr" in html and "revnet50" in html
    parents = _runs(uri, "pretrain")
    assert {r.data.tags["harness.slurm_job_id"] for r in parents} == {r["job_id"] for r in rows}
    (study,) = _runs(uri, "study")
    assert {r.data.tags["harness.study_id"] for r in parents} == {study.data.tags["harness.study_id"]}

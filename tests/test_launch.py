"""Launching without Slurm: local DDP through submitit's local executor, the preemption path
of the trainer, and the launcher's input checks. (The Slurm cluster tests are in
tests/test_slurm.py.)"""
from __future__ import annotations

import json
import signal

import pytest
import torch

from harness import checkpoint, preemption
from harness.cli import main
from harness.pipeline import RunRequest, build_config
from harness.trainer import CheckpointHook, HookBase, MetricsHook, Trainer
from tests.conftest import TINY

# Rotation on a layer-norm ResNet: a per-sample loss with no batch-statistics coupling, so
# W processes on slices of the global batch must follow the one-process trajectory. 4 steps
# (64 images, batch 32, 2 epochs): float32 summation-order differences start at ~3e-8 after one
# step and grow about 2-5x per step (measured on an AMD EPYC: 1e-6 after 4 steps, 1.5e-4 after
# 12), so a short curve is what lets the tolerances below stay tight.
NO_BN = ["--method", "rotation", "--eval", "knn", "backbone.norm=layer", "train.epochs=2", "train.log_every=1",
         *TINY, "data.train_subset=64"]


def _tags(uri: str, out_dir) -> dict:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    run_id = json.loads((out_dir / "state.json").read_text())["parent_run_id"]
    return c.get_run(run_id).data.tags


def test_local_ddp_two_processes_match_one_process(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", *NO_BN, "--output-dir", str(one), "--tracking-uri", uri]) == 0
    assert main(["run", *NO_BN, "--output-dir", str(two), "--tracking-uri", uri, "--launcher", "local",
                 "--tasks-per-node", "2", "--jobs-dir", str(tmp_path / "jobs")]) == 0
    ref = json.loads((one / "results.json").read_text())["pretrain_loss"]
    got = json.loads((two / "results.json").read_text())["pretrain_loss"]
    assert len(ref) == len(got) == 4
    # The logged loss is the mean over processes = the loss of the global batch. Measured
    # differences: ~6e-7 on the loss and ~1e-6 on the weights; a wrong gradient average would
    # be off by a whole update (~1e-3) from the second step on.
    diff = (torch.tensor(got) - torch.tensor(ref)).abs().max().item()
    assert diff < 1e-5, (diff, got, ref)
    w1 = checkpoint.load(one / "pretrain" / "method.pt")["method"]
    w2 = checkpoint.load(two / "pretrain" / "method.pt")["method"]
    for k in w1:
        assert torch.allclose(w1[k].double(), w2[k].double(), rtol=0, atol=2e-5), k
    tags = _tags(uri, two)
    assert tags["harness.world_size"] == "2" and tags["harness.per_process_batch"] == "16"
    assert tags["harness.global_batch"] == "32" and tags["harness.launcher"] == "local"
    assert _tags(uri, one)["harness.world_size"] == "1"
    assert "[harness] knn: top1" in capsys.readouterr().out  # local waits and prints the results


def _tiny_trainer(tmp_path, hooks=()):
    from harness.data.digits import DigitsSuite
    from harness.data.loading import SeededTransformDataset
    from harness import registry

    cfg = build_config(RunRequest(method="rotation", overrides={
        "train.batch_size": 16, "train.epochs": 2, "train.warmup_epochs": 0, "data.train_subset": 64,
        "train.checkpoint_every": 1000}))[0]
    suite = DigitsSuite(root=None, image_size=cfg["data.image_size"])
    suite.train_subset = 64
    suite.prepare()
    torch.manual_seed(0)
    method = registry.methods.get("rotation")(cfg)
    ds = SeededTransformDataset(suite.split("train"), method.train_transform(), 7)
    return Trainer(method, ds, cfg.section("train"), 7, tmp_path / "ckpt", torch.device("cpu"), hooks=list(hooks))


class _PreemptAt(HookBase):
    def __init__(self, step):
        self.step = step

    def after_step(self, trainer, logs):
        if trainer.step == self.step:
            preemption.request(signal.SIGUSR2)


def test_preemption_checkpoints_at_the_step_boundary_and_resumes_identically(tmp_path):
    ref = _tiny_trainer(tmp_path / "ref")
    ref.fit()

    logged = []
    stopped = _tiny_trainer(tmp_path / "run", [CheckpointHook(1000), MetricsHook(logged.extend, 1000), _PreemptAt(3)])
    with pytest.raises(SystemExit):
        stopped.fit()
    state = checkpoint.load(tmp_path / "run" / "ckpt" / checkpoint.LAST)
    assert state["step"] == 3  # the step in progress finished, nothing after it ran
    assert [s for s, _ in logged] == [1, 2, 3]  # buffered metrics flushed before the exit
    assert not preemption.pending()

    resumed = _tiny_trainer(tmp_path / "run")
    resumed.fit()
    assert resumed.resumed_from == 3
    assert resumed.history == ref.history
    for (k, a), b in zip(ref.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(a, b), k


def test_deferred_signal_runs_the_wrapped_handler_only_after_the_step(tmp_path):
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        assert preemption.defer(signal.SIGUSR2)
        with preemption.training():
            signal.raise_signal(signal.SIGUSR2)
            assert calls == [] and preemption.pending()  # inside a step: only the flag
            with pytest.raises(SystemExit):
                preemption.proceed()
        assert calls == [signal.SIGUSR2]
        signal.raise_signal(signal.SIGUSR2)  # outside training: handled at once
        assert calls == [signal.SIGUSR2] * 2
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize("args, message", [
    (["--launcher", "local", "--nodes", "2"], "needs --launcher slurm"),
    (["--tasks-per-node", "2"], "several processes need --launcher local"),
    (["--launcher", "local", "--time", "0"], "--time=0"),
])
def test_bad_launch_options_are_one_line_errors(args, message, capsys, tmp_path):
    code = main(["run", "--method", "rotation", "--output-dir", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_slurm_without_sbatch_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no git
    code = main(["run", "--method", "rotation", "--launcher", "slurm", "--no-snapshot",
                 "--output-dir", str(tmp_path / "r"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and "needs the Slurm client commands" in err


def test_global_batch_must_split_evenly(tmp_path, monkeypatch):
    from harness import ddp

    monkeypatch.setattr(ddp, "world_size", lambda: 3)
    with pytest.raises(Exception, match="not divisible by the 3 processes"):
        _tiny_trainer(tmp_path)


def test_status_lists_nothing_before_any_submission(tmp_path, capsys):
    assert main(["status", "--jobs-dir", str(tmp_path / "jobs")]) == 0
    assert "no jobs recorded" in capsys.readouterr().out


def test_launch_config_file_gives_defaults_that_flags_override(tmp_path):
    from harness.cli import _launch_options, _parser

    conf = tmp_path / "cluster.yaml"
    conf.write_text("partition: gpu\naccount: lab\ntime: 2880\ngpus-per-node: 8\n")
    args = _parser().parse_args(["run", "--method", "rotation", "--launcher", "slurm", "--launch-config", str(conf),
                                 "--time", "60"])
    opts = _launch_options(args)
    assert (opts.partition, opts.account, opts.gpus_per_node, opts.ntasks) == ("gpu", "lab", 8, 8)
    assert opts.time_min == 60  # the flag wins over the file
    assert opts.max_requeues == 3 and opts.signal_delay_s == 120  # untouched defaults


def test_launch_config_typo_is_a_one_line_error(tmp_path, capsys):
    conf = tmp_path / "cluster.yaml"
    conf.write_text("partiton: gpu\n")
    assert main(["run", "--method", "rotation", "--launcher", "slurm", "--launch-config", str(conf)]) == 2
    assert "unknown option 'partiton' (did you mean partition?)" in capsys.readouterr().err


def test_a_failed_job_is_exit_1_not_a_usage_error(capsys, tmp_path, monkeypatch):
    """A job that fails is the run's failure (exit 1); exit 2 is kept for bad input."""
    import harness.launch

    class Job:
        job_id = "7"

    monkeypatch.setattr(harness.launch, "submit_run", lambda req, opts: [Job()])
    monkeypatch.setattr(harness.launch, "wait_all",
                        lambda jobs, *a: [(False, "failed: loss is NaN at step 3 (log: 7_0_log.err)")])
    code = main(["run", "--method", "rotation", "--launcher", "local", "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err == "harness: error: job 7 failed: loss is NaN at step 3 (log: 7_0_log.err)"

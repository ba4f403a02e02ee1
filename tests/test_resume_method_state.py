"""Method state beyond the weights (MoCo's queue, InstDisc's memory bank, BYOL's EMA target,
DINO's teacher and center, SwAV's prototypes) is checkpointed: a run stopped mid-training
and resumed ends identical to one that ran straight through."""
import pytest
import torch

from harness import registry
from harness.data.digits import DigitsSuite
from harness.data.loading import SeededTransformDataset
from harness.pipeline import RunRequest, build_config
from harness.seeding import seed_everything
from harness.trainer import CheckpointHook, HookBase, Trainer

STATEFUL = ["instdisc", "dino", "moco_v2", "moco_v3", "pirl", "byol", "swav", "cmc"]


class Crash(Exception):
    pass


class CrashAfter(HookBase):
    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer, logs):
        if trainer.step == self.step:
            raise Crash


def fit(method_name: str, ckpt_dir, crash_at: int | None = None):
    cfg = build_config(RunRequest(method=method_name, overrides={
        "train.batch_size": 16, "train.epochs": 2, "train.warmup_epochs": 0, "data.train_subset": 64}))[0]
    seed_everything(0)
    method = registry.methods.get(method_name)(cfg)
    suite = DigitsSuite(image_size=cfg["data.image_size"])
    suite.train_subset = 64
    data = SeededTransformDataset(suite.split("train"), method.train_transform(), seed=0, with_index=method.needs_index)
    hooks = [CheckpointHook(3)] + ([CrashAfter(crash_at)] if crash_at else [])
    trainer = Trainer(method, data, cfg.section("train"), 0, ckpt_dir, torch.device("cpu"), hooks=hooks)
    try:
        history = trainer.fit()
    except Crash:
        return None, None
    return method.state_dict(), history


@pytest.mark.parametrize("method_name", STATEFUL)
def test_resumed_state_equals_uninterrupted(method_name, tmp_path):
    straight, straight_hist = fit(method_name, tmp_path / "a")
    assert fit(method_name, tmp_path / "b", crash_at=4) == (None, None)  # dies after the step-3 checkpoint
    resumed, resumed_hist = fit(method_name, tmp_path / "b")
    assert resumed_hist == straight_hist
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=f"{method_name}: {key} differs")

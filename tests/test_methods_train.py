"""Every registered method trains through the real trainer: finite loss that decreases."""
import math

import pytest
import torch

from harness import registry
from harness.data.digits import DigitsSuite
from harness.data.loading import SeededTransformDataset
from harness.pipeline import RunRequest, build_config
from harness.seeding import seed_everything
from harness.trainer import Trainer


@pytest.mark.parametrize("method", registry.methods.names())
def test_few_steps_finite_and_decreasing(method, tmp_path):
    # 32 images, batch 16, 8 epochs: 16 steps on the same small set, so the loss must fall.
    cfg = build_config(RunRequest(method=method, overrides={"train.batch_size": 16, "train.epochs": 8,
                                                            "train.warmup_epochs": 0}))[0]
    seed_everything(0)
    m = registry.methods.get(method)(cfg)
    suite = DigitsSuite(image_size=cfg["data.image_size"])
    suite.train_subset = 32
    data = SeededTransformDataset(suite.split("train"), m.train_transform(), seed=0)
    history = Trainer(m, data, cfg.section("train"), 0, tmp_path, torch.device("cpu")).fit()
    assert len(history) == 16 and all(math.isfinite(x) for x in history)
    first, last = sum(history[:4]) / 4, sum(history[-4:]) / 4
    assert last < first, f"{method}: loss went from {first:.4f} to {last:.4f}"

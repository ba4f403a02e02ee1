"""Every registered method trains through the real trainer: finite loss that decreases."""
import math

import pytest
import torch

from harness import registry
from tests.conftest import method_params
from harness.data.digits import DigitsSuite
from harness.data.loading import SeededTransformDataset
from harness.pipeline import RunRequest, build_config
from harness.seeding import seed_everything
from harness.trainer import Trainer


@pytest.mark.parametrize("method", method_params(trainable_only=True))
def test_few_steps_finite_and_decreasing(method, tmp_path):
    # 32 images, batch 16, 8 epochs: 16 steps on the same small set, so the loss must fall.
    cfg = build_config(RunRequest(method=method, overrides={"train.batch_size": 16, "train.epochs": 8,
                                                            "train.warmup_epochs": 0}))[0]
    seed_everything(0)
    m = registry.methods.get(method)(cfg)
    suite = DigitsSuite(image_size=cfg["data.image_size"])
    suite.train_subset = 32
    data = SeededTransformDataset(suite.split("train"), m.train_transform(), seed=0, with_index=m.needs_index)
    history = Trainer(m, data, cfg.section("train"), 0, tmp_path, torch.device("cpu")).fit()
    assert len(history) == 16 and all(math.isfinite(x) for x in history)
    first, last = sum(history[:4]) / 4, sum(history[-4:]) / 4
    assert last < first, f"{method}: loss went from {first:.4f} to {last:.4f}"


def test_probe_layer_reads_a_stage_of_the_backbone():
    cfg = build_config(RunRequest(method="rotation", overrides={"backbone.probe_layer": "block3"}))[0]
    m = registry.methods.get("rotation")(cfg).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = m.features(x)
    assert feats.shape == (3, m.num_features) and m.num_features == m.backbone.block_channels(3)
    torch.testing.assert_close(feats, m.backbone.forward_block(x, 3).mean(dim=(2, 3)))
    # colorization reads its lightness-only input through the same layer
    cfg = build_config(RunRequest(method="colorization", overrides={"backbone.probe_layer": "block2"}))[0]
    assert registry.methods.get("colorization")(cfg).features(x).shape[1] == 32


def test_revisiting_rotation_recipes_scale_the_width():
    from harness.config import DEFAULTS

    cfg = build_config(RunRequest(method="rotation", suite="imagenet", overrides={"method.recipe": "revisiting_r50_w12"}))[0]
    assert cfg["backbone.name"] == "resnet50" and cfg["backbone.width"] == 3
    assert cfg["train.schedule"] == "step" and cfg["train.decay_epochs"] == [15, 25] and cfg["train.epochs"] == 35
    assert "filters_factor 12" in cfg.sources["backbone.width"]
    assert DEFAULTS["backbone.probe_layer"].value == cfg["backbone.probe_layer"] == "pre_logits"

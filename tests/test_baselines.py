"""The `supervised` and `random` baselines: the ceiling and the floor of every table."""
import pytest
import torch

from harness.cli import main
from harness.errors import UsageError
from harness.pipeline import RunRequest, build_config
from methods.baselines import Random, Supervised


def test_random_is_the_untrained_backbone_of_the_same_architecture():
    cfg = build_config(RunRequest(method="random", seed=3))[0]
    rot_cfg = build_config(RunRequest(method="rotation", seed=3))[0]
    assert (cfg["backbone.name"], cfg["backbone.width"], cfg["train.epochs"]) == (rot_cfg["backbone.name"], rot_cfg["backbone.width"], 0)
    torch.manual_seed(3)
    a = Random(cfg)
    torch.manual_seed(3)
    b = Random(cfg)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_random_refuses_training(capsys):
    with pytest.raises(UsageError, match="train.epochs must be 0"):
        Random(build_config(RunRequest(method="random", epochs=3))[0])
    assert main(["run", "--method", "random", "--epochs", "2", "--eval", "knn"]) == 2
    assert "train.epochs must be 0" in capsys.readouterr().err


def test_supervised_checks_the_class_count():
    from harness.data.digits import DigitsSuite

    cfg = build_config(RunRequest(method="supervised", overrides={"method.num_classes": 7}))[0]
    suite = DigitsSuite(image_size=32)
    with pytest.raises(UsageError, match="method.num_classes=10"):
        Supervised(cfg).prepare(suite.split("train"))


def test_supervised_learns_the_labels(tmp_path):
    from harness.data.digits import DigitsSuite
    from harness.data.loading import SeededTransformDataset
    from harness.seeding import seed_everything
    from harness.trainer import Trainer

    cfg = build_config(RunRequest(method="supervised", overrides={"train.batch_size": 16, "train.epochs": 10,
                                                                  "train.warmup_epochs": 0}))[0]
    seed_everything(0)
    m = Supervised(cfg)
    suite = DigitsSuite(image_size=32)
    suite.train_subset = 32
    data = SeededTransformDataset(suite.split("train"), m.train_transform(), seed=0)
    history = Trainer(m, data, cfg.section("train"), 0, tmp_path, torch.device("cpu")).fit()
    # 20 steps from chance level (ln 10 = 2.30): measured 2.30 -> 1.68.
    first, last = sum(history[:4]) / 4, sum(history[-4:]) / 4
    assert first == pytest.approx(2.30, abs=0.25) and last < 0.8 * first

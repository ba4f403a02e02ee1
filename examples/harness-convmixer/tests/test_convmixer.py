"""The ConvMixer backbone: its shapes, its registration, and training with a built-in method."""
import json

import torch

from harness import registry
from harness.backbones import create_backbone
from harness.cli import main


def test_shapes_and_the_harness_backbone_contract():
    net = create_backbone("convmixer", width=0.25, small_input=True)
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 64) and net.forward_maps(x).shape == (2, 64, 16, 16)
    big = create_backbone("convmixer", width=0.25)
    assert big.forward_maps(torch.randn(1, 3, 224, 224)).shape == (1, 64, 32, 32)
    assert "convmixer" in registry.backbones.names()


def test_trains_with_a_built_in_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--method", "rotation", "--backbone", "convmixer", "--suite", "digits", "--epochs", "1",
                 "--eval", "knn", "--output-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                 "data.train_subset=64", "train.batch_size=32", "backbone.width=0.25"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["pretrain_loss"]) == 2 and 0 <= results["results"]["knn"]["top1"] <= 100

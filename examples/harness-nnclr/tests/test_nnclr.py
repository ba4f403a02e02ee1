"""NNCLR's loss and support set, and the plugin end to end on the embedded suite."""
import json
import math

import torch
import torch.nn.functional as F

from harness_nnclr import nearest_neighbours, nnclr_loss


def test_nearest_neighbour_is_the_most_similar_support_row():
    support = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    z = F.normalize(torch.tensor([[0.9, 0.1], [-0.8, 0.1], [0.1, 0.9]]), dim=1)
    assert torch.equal(nearest_neighbours(z, support), support[[0, 2, 1]])


def test_loss_is_infonce_with_the_neighbour_as_positive():
    torch.manual_seed(0)
    nn_, p = torch.randn(4, 8), torch.randn(4, 8)
    t = 0.1
    a, b = F.normalize(nn_, dim=1), F.normalize(p, dim=1)
    by_hand = -sum(math.log(math.exp(float(a[i] @ b[i]) / t) / sum(math.exp(float(a[i] @ b[j]) / t) for j in range(4)))
                   for i in range(4)) / 4
    assert abs(float(nnclr_loss(nn_, p, t)) - by_hand) < 1e-4
    # Perfectly matched pairs far from the other rows: the loss goes to 0.
    eye = torch.eye(4)
    assert float(nnclr_loss(eye, eye, 0.01)) < 1e-6


def test_support_set_is_a_fifo_of_projections():
    from harness import registry

    cls = registry.methods.get("nnclr")
    from harness.pipeline import RunRequest, build_config

    cfg = build_config(RunRequest(method="nnclr", suite="digits", overrides={"method.queue_size": 5}))[0]
    m = cls(cfg)
    z = F.normalize(torch.randn(3, int(cfg["method.proj_dim"])), dim=1)
    m._enqueue(z)
    m._enqueue(z[:2] * 1.0)
    assert torch.allclose(m.support[:3], z) and torch.allclose(m.support[3:5], z[:2]) and int(m.pointer) == 0
    m._enqueue(z[2:])
    assert torch.allclose(m.support[0], z[2]) and int(m.pointer) == 1


def test_runs_on_the_embedded_suite(tmp_path, monkeypatch):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--method", "nnclr", "--suite", "digits", "--epochs", "1", "--eval", "knn", "--output-dir", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "data.train_subset=128", "train.batch_size=32"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert all(math.isfinite(v) for v in results["pretrain_loss"]) and 0 <= results["results"]["knn"]["top1"] <= 100

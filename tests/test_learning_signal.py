"""Tests that catch a broken method, not only a crash: a short run on the embedded default
suite must learn what the same network's random initialisation does not. A SimCLR whose
positives are shuffled, or a BYOL whose target takes gradients (a known collapse), trains
without error and fails here (see the note in bench/RESULTS.md for the mutations tried)."""
from __future__ import annotations

import pytest

from harness.pipeline import RunRequest, execute

# Short runs on a fixed 2,000-image subset of `glyphs`, seed 0, kNN (k=20) on the full val set.
BUDGET = {"data.train_subset": 2000, "eval.knn.ks": [20]}
RUNS = {
    "simclr": {"train.epochs": 4, "train.batch_size": 128, "train.warmup_epochs": 0},
    "byol": {"train.epochs": 4, "train.batch_size": 64, "train.warmup_epochs": 0},
}
MARGIN = 8.0  # kNN top-1 points above the random initialisation (measured margins in RESULTS)


def _knn(method: str, epochs: int, out, overrides: dict) -> float:
    req = RunRequest(method=method, suite="glyphs", evals="knn", epochs=epochs, seed=0, output_dir=str(out),
                     overrides={**BUDGET, **overrides}, track=False)
    return execute(req, log=lambda *a, **k: None)["knn"]["top1"]


@pytest.mark.parametrize("method", sorted(RUNS))
def test_a_short_run_learns_what_the_random_initialisation_does_not(method, tmp_path):
    extra = {k: v for k, v in RUNS[method].items() if k != "train.epochs"}
    untrained = _knn(method, 0, tmp_path / "random", extra)
    trained = _knn(method, RUNS[method]["train.epochs"], tmp_path / "trained", extra)
    assert trained > untrained + MARGIN, (method, trained, untrained)

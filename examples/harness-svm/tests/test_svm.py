"""The SVM protocol on the embedded suite: registered, declared, and it separates what a kNN does."""
import json

from harness import registry
from harness.cli import main


def test_registered_with_its_declaration():
    ev = registry.evals.get("svm")
    assert ev.headline == "top1" and ev.presets["goyal2019"]["folds"].value == 3


def test_runs_after_pretraining_and_reports_the_chosen_cost(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--method", "supervised", "--suite", "digits", "--epochs", "1", "--eval", "svm,knn",
                 "--output-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                 "data.train_subset=256", "train.batch_size=32"]) == 0
    r = json.loads((out / "results.json").read_text())["results"]
    assert r["svm"]["cost"] in (0.01, 0.1, 1.0, 10.0)
    # The chosen cost is the one cross-validation ranked best.
    cv = {k: v for k, v in r["svm"].items() if k.startswith("cv_top1_C")}
    assert max(cv, key=cv.get) == f"cv_top1_C{r['svm']['cost']:g}"
    assert 0 <= r["svm"]["top1"] <= 100

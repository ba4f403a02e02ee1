"""`harness run --method <each> --eval linear,knn` works on the embedded suite (tiny budget)."""
import json

import pytest

from harness import registry
from harness.cli import main
from tests.conftest import TINY, method_params


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    # One store for all methods: creating a SQLite store costs seconds of migrations.
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


@pytest.mark.parametrize("method", method_params())
def test_method_runs_linear_and_knn(method, tmp_path, tracking_uri, capsys):
    out = tmp_path / "run"
    epochs = "1" if getattr(registry.methods.get(method), "trainable", True) else "0"
    code = main(["run", "--method", method, "--epochs", epochs, "--eval", "linear,knn", "--output-dir", str(out),
                 "--tracking-uri", tracking_uri, *TINY])
    assert code == 0, capsys.readouterr().err[-2000:]
    results = json.loads((out / "results.json").read_text())["results"]
    for name in ("linear", "knn"):
        assert 0.0 <= results[name]["top1"] <= results[name]["top5"] <= 100.0
    assert f"{method} linear (moco): top1" in capsys.readouterr().out


def test_list_gives_every_method_a_description_and_source(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for method in registry.methods.names():
        line = next(l for l in out.splitlines() if l.strip().startswith(method + " "))
        desc = line.split(None, 1)[1]
        assert len(desc) > 20 and desc.rstrip().endswith("]") and "[" in desc, line

"""The seams new protocols plug into: an eval from outside the package with a lower-is-better
metric, config checked before any work, one process per run folder, the layer rules."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness import registry
from harness.cli import main
from harness.config import P
from harness.metrics import LOWER, Metric
from harness.rundir import RunFolder
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
# Small budgets for every built-in eval, so `--eval all` stays a few seconds.
ALL_EVALS_TINY = [*TINY, "eval.linear_fast.epochs=1", "eval.linear_fast.lrs=[0.1]", "eval.semi_supervised.epochs=[1,1]"]


class CorruptionError:
    """A test-only plugin eval, written against the public pieces only: the top-1 error (%) of
    a 1-nearest-neighbour classifier on val images with Gaussian noise added (lower is
    better). It subclasses nothing, names no suite, and reads labelled classification data."""

    name = "corruption_error"
    protocol = "corruption_error"
    description = "1-NN error on noisy val images"
    source = "tests/test_seams.py"
    default_preset = "noise"
    presets = {"noise": {"sigma": P(0.5, "test: std of the Gaussian noise on normalised images")}}
    metrics = (Metric("error", LOWER, "%", "1-NN top-1 error under Gaussian noise"),)
    headline = "error"
    needs = ("classification",)

    def __init__(self, cfg, feature_cache=None):
        self.cfg, self.preset = cfg, cfg["eval.corruption_error.preset"]

    @classmethod
    def config_layer(cls, preset):
        preset = preset or cls.default_preset
        return {"eval.corruption_error.preset": preset,
                **{f"eval.corruption_error.{k}": v for k, v in cls.presets[preset].items()}}

    @classmethod
    def check_config(cls, cfg):
        pass

    def run(self, method, suite, device, out_dir):
        from harness.data.transforms import eval_transform

        tf = eval_transform(self.cfg["data.image_size"], self.cfg["data.eval_resize_ratio"])
        g = torch.Generator().manual_seed(0)
        method.eval()
        with torch.no_grad():
            def feats(split, noise):
                data = suite.split(split, tf)
                x = torch.stack([data[i][0] for i in range(len(data))])
                y = torch.tensor(data.targets)
                if noise:
                    x = x + float(self.cfg["eval.corruption_error.sigma"]) * torch.randn(x.shape, generator=g)
                return torch.nn.functional.normalize(method.features(x.to(device)).float().cpu(), dim=1), y
            ftr, ytr = feats("train", False)
            fva, yva = feats("val", True)
        pred = ytr[(fva @ ftr.T).argmax(dim=1)]
        return {"error": 100.0 * (pred != yva).float().mean().item()}


@pytest.fixture
def plugin_eval():
    registry.evals.register("corruption_error", CorruptionError)
    yield CorruptionError
    registry.evals.unregister("corruption_error")


def test_a_plugin_eval_with_a_lower_is_better_metric_runs_everywhere(plugin_eval, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    errors = {}
    for epochs in (0, 1):
        out = tmp_path / f"run{epochs}"
        assert main(["run", "--method", "rotation", "--suite", "digits", "--epochs", str(epochs), "--eval", "all",
                     "--tracking-uri", uri,
                     "--output-dir", str(out), *ALL_EVALS_TINY]) == 0
        summary = capsys.readouterr().out
        saved = RunFolder(out).results()
        # It ran under --eval all on a built-in suite that names no eval, beside the built-ins.
        assert set(saved["results"]) == {"corruption_error", "knn", "linear", "linear_fast", "semi_supervised",
                                         "robustness"}
        errors[epochs] = saved["results"]["corruption_error"]["error"]
        assert saved["declarations"]["corruption_error"]["headline"] == "error"
        assert saved["declarations"]["corruption_error"]["metrics"][0]["direction"] == "lower"
        line = next(ln for ln in summary.splitlines() if "corruption_error (noise)" in ln)
        assert f"error {errors[epochs]:.2f}% (lower is better)" in line
    assert errors[0] != errors[1] and all(0 <= e <= 100 for e in errors.values())

    assert main(["leaderboard", "build", "--tracking-uri", uri, "--output-dir", str(tmp_path / "site")]) == 0
    html = (tmp_path / "site" / "index.html").read_text()
    assert "corruption_error · noise · error" in html and "↓" in html
    # Ranked by its headline, the lower error first; the bold best is the lower one too.
    assert "ranked by <code>corruption_error · noise · error</code>" in html
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            for row in re.findall(r'<tr data-backbone="resnet_small"[^>]*>(.*?)</tr>', html, re.S)]
    order = [int(cells[3].strip()) for cells in rows]  # method, backbone, width, epochs, ...
    assert order == sorted(errors, key=errors.get), (order, errors)
    best = {int(cells[3].strip()): cells[4] for cells in rows}[min(errors, key=errors.get)]
    assert f"<strong>{min(errors.values()):.1f}</strong>" in best


@pytest.mark.parametrize("bad", ["eval.linear.lr=abc", "train.epochs=0.5", "backbone.name=../x"])
def test_bad_options_exit_2_with_one_line_before_any_work(bad, tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--method", "rotation", "--eval", "linear", bad],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error: " + bad.split("=")[0]), proc.stderr
    assert elapsed < 10, elapsed
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no MLflow store


def test_two_identical_commands_started_together_make_one_set_of_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    from harness import tags

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "harness.cli", "run", "--method", "rotation", "--epochs", "1", "--eval", "knn,linear",
           "--tracking-uri", uri, "--output-dir", str(tmp_path / "run"), *TINY]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    loser = next(err for code, err in outcomes if code == 2)
    assert "is in use" in loser and "pid" in loser and len(loser.strip().splitlines()) == 1

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tags.EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    stages = sorted(r.data.tags[tags.STAGE] for r in runs)
    assert stages == ["eval", "eval", "pretrain"]
    assert sorted(r.data.tags[tags.EVAL] for r in runs if r.data.tags[tags.STAGE] == "eval") == ["knn", "linear"]


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(tree / "pyproject.toml"),
                           "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def test_layer_rules_hold_and_a_forbidden_import_breaks_them(tmp_path):
    tree = tmp_path / "tree"
    for pkg in ("harness", "methods", "evals", "leaderboard"):
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    clean = _lint(tree)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    for source, forbidden in (("harness/optim.py", "methods.base"), ("methods/rotation.py", "evals.knn"),
                              ("leaderboard/aggregate.py", "harness.registry")):
        path = tree / source
        original = path.read_text()
        path.write_text(original + f"\nimport {forbidden}  # a layer violation\n")
        broken = _lint(tree)
        path.write_text(original)
        assert broken.returncode != 0, (source, broken.stdout)
        assert "BROKEN" in broken.stdout and forbidden in broken.stdout, broken.stdout


def test_an_eval_a_suite_cannot_feed_is_left_out_of_all_and_named_when_asked_for(tmp_path, monkeypatch, capsys):
    from harness.data.base import DEFAULT_SUITE
    from harness.pipeline import RunRequest, build_config

    class NeedsBoxes(CorruptionError):
        name = "boxes_ap"
        needs = ("depth maps",)

    registry.evals.register("boxes_ap", NeedsBoxes)
    try:
        assert "boxes_ap" not in build_config(RunRequest(method="rotation"))[3]  # --eval all: not on the default suite
        monkeypatch.chdir(tmp_path)
        assert main(["run", "--method", "rotation", "--eval", "knn,boxes_ap"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"harness: error: eval 'boxes_ap' needs depth maps, which suite '{DEFAULT_SUITE}' "
                       "does not provide (it provides: labelled classification splits, detection scenes, "
                       "corrupted test sets)")
        assert list(tmp_path.iterdir()) == []
    finally:
        registry.evals.unregister("boxes_ap")

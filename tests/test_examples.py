"""The example plugin packages in examples/, each installed into the venv and run end to end."""
import json
import os
from pathlib import Path

import pytest

from tests._plugins import harness, installed, pytest_in
from tests.conftest import TINY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# package, registry, name, and a run that uses it (a method, an eval in --eval all, a backbone
# trained by a built-in method) on the embedded suite.
CASES = [
    ("harness-nnclr", "methods", "nnclr", ["--method", "nnclr", "--eval", "knn"]),
    ("harness-svm", "evals", "svm", ["--method", "rotation", "--eval", "all"]),
    ("harness-convmixer", "backbones", "convmixer", ["--method", "rotation", "--backbone", "convmixer", "--eval", "knn",
                                                     "backbone.width=0.25"]),
]


@pytest.mark.parametrize("package,kind,name,run_args", CASES)
def test_an_example_plugin_installs_lists_passes_its_tests_and_runs(package, kind, name, run_args, tmp_path,
                                                                     tmp_path_factory):
    env = {**os.environ, "SSL_HARNESS_DATA": str(tmp_path_factory.getbasetemp() / "data-cache")}
    with installed(EXAMPLES / package, package):
        listed = harness("list", kind, cwd=tmp_path, env=env)
        assert listed.returncode == 0 and name in listed.stdout, listed.stderr[-2000:]
        tests = pytest_in(EXAMPLES / package, env)
        assert tests.returncode == 0, tests.stdout[-3000:]
        run = harness("run", *run_args, "--suite", "digits", "--epochs", "1", "--output-dir", str(tmp_path / "run"),
                      *TINY, cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        results = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
        if kind == "evals":  # --eval all picked the plugin eval up on a built-in suite
            assert name in results

"""The example plugin packages in examples/, each installed into the venv and run end to end."""
import os
from pathlib import Path

import pytest

from tests._plugins import harness, installed, pytest_in

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("package,kind,name", [("harness-nnclr", "methods", "nnclr")])
def test_an_example_plugin_installs_lists_passes_its_tests_and_runs(package, kind, name, tmp_path, tmp_path_factory):
    env = {**os.environ, "SSL_HARNESS_DATA": str(tmp_path_factory.getbasetemp() / "data-cache")}
    with installed(EXAMPLES / package, package):
        listed = harness("list", kind, cwd=tmp_path, env=env)
        assert listed.returncode == 0 and name in listed.stdout, listed.stderr[-2000:]
        tests = pytest_in(EXAMPLES / package, env)
        assert tests.returncode == 0, tests.stdout[-3000:]
        run = harness("run", "--method", name, "--suite", "digits", "--epochs", "1", "--eval", "knn",
                      "data.train_subset=128", "train.batch_size=32", cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr[-3000:]

"""`harness new`: the written plugin package installs, registers, passes its own test and runs."""
import ast
import os
from pathlib import Path

import pytest

from harness.cli import main
from tests._plugins import harness, installed, pytest_in


@pytest.mark.parametrize("kind,name", [("method", "foo"), ("eval", "nearest_mean"), ("backbone", "tiny_convnet")])
def test_a_new_plugin_installs_registers_passes_its_test_and_runs(kind, name, tmp_path, tmp_path_factory):
    env = {**os.environ, "SSL_HARNESS_DATA": str(tmp_path_factory.getbasetemp() / "data-cache")}
    assert main(["new", kind, name, "--dir", str(tmp_path)]) == 0
    root = tmp_path / f"harness-{name}"
    # The package reaches the harness only through the public API.
    source = (root / f"{name}_plugin" / "__init__.py").read_text()
    imported = {n.module.split(".")[0] for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name.split(".")[0] for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "ssl_harness", "torch"}, imported
    with installed(root, f"harness-{name}"):
        listed = harness("list", f"{kind}s", cwd=tmp_path, env=env)
        assert listed.returncode == 0 and name in listed.stdout, listed.stderr[-2000:]
        tests = pytest_in(root, env)
        assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout[-3000:]
        args = {"method": ["run", "--method", name], "eval": ["run", "--method", "rotation", "--eval", name],
                "backbone": ["run", "--method", "rotation", "--backbone", name, "--eval", "knn"]}[kind]
        run = harness(*args, "--suite", "digits", "--epochs", "1", "data.train_subset=64", "train.batch_size=32",
                      *(["--eval", "knn"] if kind == "method" else []), cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr[-3000:]


def test_bad_or_taken_names_are_one_line_errors(tmp_path, capsys):
    assert main(["new", "method", "Foo-Bar", "--dir", str(tmp_path)]) == 2
    assert "expected a lower-case Python identifier" in capsys.readouterr().err
    assert main(["new", "method", "simclr", "--dir", str(tmp_path)]) == 2
    assert "already registered" in capsys.readouterr().err
    assert main(["new", "method", "fresh", "--dir", str(tmp_path)]) == 0
    assert main(["new", "method", "fresh", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not list((tmp_path).glob("harness-Foo*"))


def test_the_public_api_exports_what_plugins_need():
    import ssl_harness

    for name in ssl_harness.__all__:
        assert getattr(ssl_harness, name) is not None, name
    from methods.base import Method

    assert ssl_harness.Method is Method

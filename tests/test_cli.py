"""The command line as a user meets it: listings, and one-line errors with exit code 2."""
import subprocess
import sys

import pytest

from harness.cli import main


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_shows_every_kind_with_descriptions(capsys):
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    for kind, name in [("methods", "cpc_v2"), ("methods", "rotation"), ("evals", "linear"), ("evals", "knn"),
                       ("backbones", "resnet50"), ("backbones", "resnet_small"), ("suites", "digits"), ("suites", "imagenet")]:
        assert f"{kind}:" in out
        line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 10  # a real description follows the name


def test_unknown_method_is_one_line_listing_known(capsys):
    code, out, err = run_cli(["run", "--method", "nope"], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert "unknown method 'nope'" in err and "cpc_v2" in err and "rotation" in err


def test_imagenet_without_root_names_layout(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["run", "--method", "rotation", "--suite", "imagenet"], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert "train/<wnid>" in err and "val" in err
    assert not (tmp_path / "mlflow.db").exists()  # failed before any tracking


def test_unknown_override_names_close_matches(capsys):
    code, _, err = run_cli(["run", "--method", "rotation", "--print-config", "train.lrr=0.1"], capsys)
    assert code == 2
    assert "unknown config key 'train.lrr'" in err and "train.lr" in err


def test_override_type_is_checked(capsys):
    code, _, err = run_cli(["run", "--method", "rotation", "--print-config", "train.lr=fast"], capsys)
    assert code == 2 and "expected a number" in err


def test_unknown_eval_and_backbone(capsys):
    code, _, err = run_cli(["run", "--method", "rotation", "--eval", "linear,nope", "--print-config"], capsys)
    assert code == 2 and "unknown eval 'nope'" in err and "knn" in err
    code, _, err = run_cli(["run", "--method", "rotation", "--backbone", "resnet9000", "--print-config"], capsys)
    assert code == 2 and "unknown backbone 'resnet9000'" in err and "resnet50" in err


def test_print_config_shows_layers_and_sources(capsys):
    code, out, _ = run_cli(["run", "--method", "cpc_v2", "--print-config", "train.lr=0.01"], capsys)
    assert code == 0
    lines = {l.split()[0]: l for l in out.splitlines() if not l.startswith("#")}
    assert "command line" in lines["train.lr"] and "0.01" in lines["train.lr"]
    assert "layer norm" in lines["backbone.norm"]  # the paper's recipe, with its citation
    assert "profile for suite 'digits'" in lines["method.patch_size"]  # glyphs takes the digits profiles
    assert "suite 'glyphs' profile" in lines["eval.linear.lr"]  # the default suite's probe budget


def test_overrides_may_sit_between_options(capsys):
    code, out, _ = run_cli(["run", "--method", "rotation", "train.lr=0.01", "--eval", "knn", "train.epochs=2",
                            "--print-config", "train.lr=0.02"], capsys)
    assert code == 0
    lines = {l.split()[0]: l for l in out.splitlines() if not l.startswith("#")}
    assert "0.02" in lines["train.lr"] and "command line" in lines["train.lr"]  # the later one wins
    assert lines["train.epochs"].split()[1] == "2"


@pytest.mark.parametrize("argv", [["run", "--method", "rotation", "--print-config", "--bogus"],
                                  ["list", "methods", "train.lr=1"]])
def test_unknown_arguments_are_still_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "unrecognized arguments" in err


def test_console_script_exits_2_without_traceback():
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--method", "nope"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_unreachable_tracking_server_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["run", "--method", "rotation", "--tracking-uri", "http://127.0.0.1:9"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "tracking server http://127.0.0.1:9 is unreachable" in err
    assert not (tmp_path / "runs").exists()  # nothing written before the check


@pytest.mark.parametrize("argv", [["run"], ["lst"], ["run", "--method", "rotation", "--seed", "abc"]])
def test_argument_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "error:" in err


def test_probe_layer_a_method_cannot_read_fails_before_training(capsys, tmp_path):
    code, _, err = run_cli(["run", "--method", "jigsaw", "--eval", "knn", "--output-dir", str(tmp_path / "r"),
                            "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "backbone.probe_layer=block3"], capsys)
    assert code == 2 and "method 'jigsaw'" in err and "pre_logits" in err
    assert not (tmp_path / "r" / "checkpoints").exists()
    code, _, err = run_cli(["run", "--method", "rotation", "--eval", "knn", "--output-dir", str(tmp_path / "r2"),
                            "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "backbone.probe_layer=block9"], capsys)
    assert code == 2 and "expected one of pre_logits, block1" in err

"""Robustness: the mCE formula, the released layouts, deterministic generation, normalisers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from evals.robustness.mce import (ALEXNET_IMAGENET, ALEXNET_IMAGENET_C, ErrorTable, corruption_error,
                                  relative_corruption_error, summarize)
from harness.cli import main
from harness.data.corruptions import MCE_CORRUPTIONS, read_cifar_c, read_imagenet_c
from harness.errors import UsageError
from tests.conftest import TINY

# Two corruptions (one of the 15, one extra) on two val images per class keep each run short.
SMALL = ["eval.robustness.images_per_class=2", "eval.robustness.corruptions=[gaussian_noise,speckle_noise]"]
RUN = ["run", "--epochs", "0", "--eval", "robustness", *TINY, *SMALL]


# -- the formula ---------------------------------------------------------------------------------

def test_alexnet_against_itself_gives_mce_100_and_relative_mce_100():
    out = summarize(ALEXNET_IMAGENET, ALEXNET_IMAGENET)
    assert out["mce"] == pytest.approx(100.0) and out["relative_mce"] == pytest.approx(100.0)
    assert out["clean_error"] == pytest.approx(43.45)
    # The unnormalised mean is the mean of the published per-corruption means (gaussian_noise .886428 ...).
    assert out["error/gaussian_noise"] == pytest.approx(88.6428)
    assert out["mean_error"] == pytest.approx(100 * np.mean([np.mean(v) for v in ALEXNET_IMAGENET_C.values()]))


def test_halved_errors_give_mce_50():
    halved = ErrorTable(ALEXNET_IMAGENET.clean / 2, {c: tuple(e / 2 for e in v) for c, v in ALEXNET_IMAGENET_C.items()})
    out = summarize(halved, ALEXNET_IMAGENET)
    assert out["mce"] == pytest.approx(50.0)
    assert all(out[f"ce/{c}"] == pytest.approx(50.0) for c in MCE_CORRUPTIONS)
    # Halving the clean error too halves the error each corruption adds: relative mCE 50 as well.
    assert out["relative_mce"] == pytest.approx(50.0)


def test_relative_ce_counts_only_the_error_a_corruption_adds_over_the_models_own_clean_error():
    # A model 10 points worse than AlexNet everywhere, clean included: the corruptions add exactly
    # what they add to AlexNet, so relative CE is 100 while CE is above 100.
    worse = ErrorTable(ALEXNET_IMAGENET.clean + 0.1, {c: tuple(e + 0.1 for e in v) for c, v in ALEXNET_IMAGENET_C.items()})
    for c in ("fog", "contrast"):
        assert relative_corruption_error(worse, ALEXNET_IMAGENET, c) == pytest.approx(100.0)
        assert corruption_error(worse, ALEXNET_IMAGENET, c) > 100.0
    # A model whose errors never move off its clean error has relative mCE 0.
    flat = ErrorTable(0.3, {c: (0.3,) * 5 for c in MCE_CORRUPTIONS})
    assert summarize(flat, ALEXNET_IMAGENET)["relative_mce"] == pytest.approx(0.0)


def test_extra_corruptions_are_reported_apart_and_never_in_mce():
    with_extra = ErrorTable(0.2, {"fog": (0.5,) * 5, "spatter": (0.9,) * 5})
    out = summarize(with_extra, ErrorTable(0.4, {"fog": (1.0,) * 5, "spatter": (0.1,) * 5}))
    assert out["mce"] == pytest.approx(50.0)  # fog only
    assert out["extra_mean_error"] == pytest.approx(90.0) and out["mean_error"] == pytest.approx(50.0)
    assert "ce/spatter" not in out


def test_a_reference_that_never_errs_cannot_normalise():
    model = ErrorTable(0.1, {"fog": (0.2,) * 5})
    with pytest.raises(ValueError, match="no error on fog"):
        summarize(model, ErrorTable(0.0, {"fog": (0.0,) * 5}))
    # Its corruptions add nothing over its clean error: CE is defined, relative CE is not.
    out = summarize(model, ErrorTable(0.5, {"fog": (0.5,) * 5}))
    assert out["mce"] == pytest.approx(40.0) and "relative_mce" not in out


# -- the released layouts -----------------------------------------------------------------------

def _glyph_val(cache: Path) -> Path:
    return next(cache.glob("glyphs-v*/val"))


def _imagenet_c_tree(root: Path, corruptions, val: Path, per_class: int = 2) -> Path:
    """The released layout, <root>/<corruption>/<severity>/<class>/*.JPEG, from glyph val images
    (the later the severity, the darker the image)."""
    for c in corruptions:
        for s in range(1, 6):
            for cls in sorted(p.name for p in val.iterdir()):
                d = root / c / str(s) / cls
                d.mkdir(parents=True)
                for f in sorted((val / cls).iterdir())[:per_class]:
                    img = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) * (1 - 0.15 * s)
                    Image.fromarray(img.astype(np.uint8)).save(d / f"{f.stem}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def glyph_data(tmp_path_factory):
    """The session's glyphs suite on disk (generated once)."""
    from harness.data.glyphs import GlyphsSuite

    os.environ["SSL_HARNESS_DATA"] = str(tmp_path_factory.getbasetemp() / "data-cache")
    GlyphsSuite().prepare()
    return tmp_path_factory.getbasetemp() / "data-cache"


def test_released_imagenet_c_tree_is_read_and_scored(glyph_data, tmp_path, monkeypatch):
    tree = _imagenet_c_tree(tmp_path / "ImageNet-C", ["gaussian_noise", "fog"], _glyph_val(glyph_data))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--method", "random", "--epochs", "0", "--eval", "robustness", "--output-dir", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *TINY, f"eval.robustness.data_root={tree}",
                 "eval.robustness.corruptions=[gaussian_noise,fog]"]) == 0
    record = json.loads((out / "evals" / "robustness" / "robustness.json").read_text())
    assert record["corrupted_sets"]["layout"] == "imagenet-c" and record["corrupted_sets"]["source"] == "release"
    assert record["corrupted_sets"]["content_hash"].startswith("listing:")
    m = json.loads((out / "results.json").read_text())["results"]["robustness"]
    assert m["images_per_set"] == 20.0  # 2 images x 10 classes per corruption and severity
    assert set(record["errors"]["by_corruption"]) == {"gaussian_noise", "fog"}
    for c in ("gaussian_noise", "fog"):
        assert m[f"error/{c}"] == pytest.approx(np.mean([m[f"error/{c}/{s}"] for s in range(1, 6)]))
    # No AlexNet reference for this tree: the unnormalised errors, labelled as such.
    assert "mce" not in m and m["mean_error"] == pytest.approx((m["error/gaussian_noise"] + m["error/fog"]) / 2)
    assert record["normalizer"]["kind"] == "unnormalized"
    assert (out / "evals" / "robustness" / "corruption_errors.png").read_bytes()[:4] == b"\x89PNG"
    # Re-run into another tracking store: the cached result is tracked with the label and the
    # headline it was recorded with, not the eval's defaults.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["run", "--method", "random", "--epochs", "0", "--eval", "robustness", "--output-dir", str(out),
                 "--tracking-uri", other, *TINY, f"eval.robustness.data_root={tree}",
                 "eval.robustness.corruptions=[gaussian_noise,fog]"]) == 0
    client = MlflowClient(other)
    (tracked,) = client.search_runs([client.get_experiment_by_name("ssl-harness").experiment_id],
                                    "tags.`harness.eval` = 'robustness'")
    assert tracked.data.tags["harness.preset"] == "imagenet_c/moco-probe/unnormalized"
    assert json.loads(tracked.data.tags["harness.metrics"])["headline"] == "mean_error"
    assert tracked.data.metrics["mean_error"] == pytest.approx(m["mean_error"])


def test_a_missing_corruption_or_severity_folder_is_a_one_line_error_before_any_work(glyph_data, tmp_path, capsys,
                                                                                     monkeypatch):
    tree = _imagenet_c_tree(tmp_path / "ImageNet-C", ["gaussian_noise"], _glyph_val(glyph_data), per_class=1)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--method", "random", "--eval", "robustness", f"eval.robustness.data_root={tree}",
                 "eval.robustness.corruptions=[gaussian_noise,fog]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no corruption folder 'fog'" in err and "<corruption>/<1-5>/<wnid>" in err
    assert not (tmp_path / "runs").exists()
    import shutil

    shutil.rmtree(tree / "gaussian_noise" / "4")
    with pytest.raises(UsageError, match="no severity folder gaussian_noise/4"):
        read_imagenet_c(tree, ["gaussian_noise"], {})


def _cifar_c(root: Path, corruptions, per_severity: int = 4, classes: int = 10) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(per_severity) % classes, 5).astype(np.int64)
    np.save(root / "labels.npy", labels)
    for c in corruptions:
        np.save(root / f"{c}.npy", rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8))
    return root


def test_cifar_c_arrays_are_read_and_scored(glyph_data, tmp_path, monkeypatch):
    from harness.data.glyphs import GlyphsSuite
    from harness.data.transforms import to_tensor

    root = _cifar_c(tmp_path / "CIFAR-10-C", ["contrast", "saturate"])
    sets = read_cifar_c(root, ["contrast"], 10)
    ds = sets.dataset("contrast", 3, to_tensor())
    assert len(ds) == 4 and [ds[i][1] for i in range(4)] == [0, 1, 2, 3]
    assert ds[0][0].shape == (3, 32, 32)
    with pytest.raises(UsageError, match="has no fog.npy"):
        read_cifar_c(root, ["fog"], 10)
    np.save(root / "labels.npy", np.zeros(7, dtype=np.int64))
    with pytest.raises(UsageError, match="5 severities of equal size"):
        read_cifar_c(root, ["contrast"], 10)
    np.save(root / "labels.npy", np.tile(np.arange(4), 5).astype(np.int64))
    # Scored through the eval: a suite whose releases come as CIFAR-C arrays reads them.
    monkeypatch.setattr(GlyphsSuite, "corruption_layout", "cifar-c")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--method", "random", "--epochs", "0", "--eval", "robustness", "--output-dir", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *TINY, f"eval.robustness.data_root={root}",
                 "eval.robustness.corruptions=[contrast,saturate]"]) == 0
    m = json.loads((out / "results.json").read_text())["results"]["robustness"]
    assert m["images_per_set"] == 4.0 and "error/saturate/5" in m and "extra_mean_error" in m


# -- generation -----------------------------------------------------------------------------------

def test_generation_is_deterministic_across_processes_and_worker_counts(glyph_data, tmp_path):
    env = {**os.environ, "SSL_HARNESS_DATA": str(glyph_data)}
    outs = []
    for name, workers in (("a", "1"), ("b", "2")):
        cmd = [sys.executable, "-m", "harness.cli", "data", "make-corruptions", "--suite", "glyphs",
               "--images-per-class", "1", "--corruptions", "glass_blur,frost,impulse_noise,motion_blur",
               "--workers", workers, "--out", str(tmp_path / name)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(proc.stdout)
    files = {p.relative_to(tmp_path / "a").as_posix(): p.read_bytes() for p in (tmp_path / "a").rglob("*.png")}
    assert len(files) == 4 * 5 * 10  # corruptions x severities x one image per class
    assert files == {p.relative_to(tmp_path / "b").as_posix(): p.read_bytes() for p in (tmp_path / "b").rglob("*.png")}
    hashes = [line for out in outs for line in out.splitlines() if "content hash" in line]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    # The corruption did change the images (the clean glyph would hash the same at every severity).
    sev = [files[f"glass_blur/{s}/0/00000.png"] for s in range(1, 6)]
    assert len(set(sev)) == 5


def test_spatter_that_spatters_nothing_keeps_the_clean_image_instead_of_a_platform_cast_of_nan():
    from imagecorruptions import corrupt

    from harness.data.corruptions import corrupt_image

    img = np.full((32, 32, 3), 120, np.uint8)
    # Seed 35: no liquid above spatter's threshold on 32 px, so the library divides 0 by 0.
    out, undefined = corrupt_image(img, "spatter", 1, 35)
    assert undefined == img.size and (out == img).all()
    np.random.seed(35)
    with np.errstate(all="ignore"):
        raw = corrupt(img, corruption_name="spatter", severity=1)
    assert not (raw == img).all()  # the library alone returns the cast of NaN
    out, undefined = corrupt_image(img, "spatter", 1, 0)
    assert undefined == 0 and not (out == img).all()  # an ordinary draw does spatter


def test_generated_sets_and_alexnet_reference_normalise_later_runs(glyph_data, tmp_path, monkeypatch):
    """The suite's supervised AlexNet records the normaliser for the exact images scored; a later
    run of another method is normalised by it and names it; the tracked run says so."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    ref = tmp_path / "alexnet"
    assert main([*RUN, "--method", "supervised", "--backbone", "alexnet", "--output-dir", str(ref),
                 "--tracking-uri", uri]) == 0
    r = json.loads((ref / "results.json").read_text())["results"]["robustness"]
    assert r["mce"] == pytest.approx(100.0)
    # An untrained AlexNet may sit at chance on clean and corrupted images alike; relative CE is
    # then undefined and left out, never made up.
    ref_record = json.loads((ref / "evals" / "robustness" / "robustness.json").read_text())
    if "relative_mce" in r:
        assert r["relative_mce"] == pytest.approx(100.0)
    else:
        assert ref_record["normalizer"]["relative"].startswith("undefined")
    other = tmp_path / "random"
    assert main([*RUN, "eval.linear.preset=simclr", "eval.linear.epochs=1", "--method", "random",
                 "--output-dir", str(other), "--tracking-uri", uri]) == 0
    record = json.loads((other / "evals" / "robustness" / "robustness.json").read_text())
    assert record["normalizer"]["kind"] == "alexnet_run" and record["normalizer"]["run"] == str(ref)
    assert record["probe"] == "linear/simclr"
    m = record["metrics"]
    assert m["mce"] == pytest.approx(m["ce/gaussian_noise"])  # the only mCE corruption chosen
    assert m["ce/gaussian_noise"] == pytest.approx(100 * m["error/gaussian_noise"] / r["error/gaussian_noise"])
    sets = record["corrupted_sets"]
    assert sets["source"] == "generated" and len(sets["content_hash"]) == 64
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ssl-harness").experiment_id],
                              "tags.`harness.eval` = 'robustness'")
    by_method = {x.data.tags["harness.method"]: x for x in runs}
    tags = by_method["random"].data.tags
    assert tags["harness.preset"] == "imagenet_c/simclr-probe/alexnet_run"
    assert json.loads(tags["harness.metrics"])["headline"] == "mce"
    assert tags["harness.robustness.data_hash"] == sets["content_hash"]
    assert by_method["supervised"].data.metrics["mce"] == pytest.approx(100.0)
    # The run's page (MLflow) shows the error by corruption and severity as a figure.
    artifacts = {a.path for a in client.list_artifacts(by_method["random"].info.run_id)}
    assert {"corruption_errors.png", "robustness.json"} <= artifacts
    # The leaderboard: mCE ranked lowest first, clean error beside it, each probe its own column.
    from leaderboard.aggregate import column_metrics, leaderboard_table
    from leaderboard.query import eval_runs

    columns = column_metrics(leaderboard_table(eval_runs(uri)))
    mce = columns["robustness · imagenet_c/simclr-probe/alexnet_run · mce"]
    assert mce.headline and not mce.metric.higher_is_better
    assert not columns["robustness · imagenet_c/simclr-probe/alexnet_run · clean_error"].metric.higher_is_better
    assert "robustness · imagenet_c/moco-probe/alexnet_run · mce" in columns  # the reference's own probe


def test_robustness_reuses_the_linear_evals_head(glyph_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--method", "random", "--epochs", "0", "--eval", "linear,robustness", "--output-dir", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *TINY, *SMALL,
                 "eval.robustness.normalizer=none"]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert res["robustness"]["probe_reused"] == 1.0
    # The same head, the same clean images: the probe's val error is the clean error when every val
    # image is scored (here 2 per class, so the two only agree in range).
    assert 0.0 <= res["robustness"]["clean_error"] <= 100.0


def test_a_suite_without_corrupted_sets_needs_a_data_root(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--method", "rotation", "--suite", "imagenet", "--eval", "robustness"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs corrupted test sets, which suite 'imagenet' does not provide" in err
    assert main(["run", "--method", "rotation", "--eval", "robustness", "eval.robustness.data_root=/nonexistent"]) == 2
    assert "eval.robustness.data_root=/nonexistent: no such folder" in capsys.readouterr().err
    assert main(["run", "--method", "rotation", "--eval", "robustness", "eval.robustness.corruptions=[fgo]"]) == 2
    assert "fgo" in capsys.readouterr().err


def test_with_several_probe_layers_the_probe_layers_head_classifies():
    from evals.robustness import probe_head

    cfg = {"eval.linear.layers": [], "backbone.probe_layer": "pre_logits"}

    class C(dict):
        def get(self, k, d=None):
            return dict.get(self, k, d)

    assert probe_head(C(cfg)) == "probe"
    assert probe_head(C({**cfg, "eval.linear.layers": ["block3", "pre_logits"]})) == "pre_logits"
    assert probe_head(C({**cfg, "eval.linear.layers": ["block1", "block3"], "backbone.probe_layer": "block1"})) == "block1"
    assert probe_head(C({**cfg, "eval.linear.layers": ["block1", "block3"]})) == "block3"  # the deepest trained

"""Semi-supervised fine-tuning: SimCLR's ImageNet subset lists, balanced subsets elsewhere, presets."""
import hashlib
import lzma
import socket
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from harness.cli import main
from harness.data.subsets import SIMCLR_SUBSETS, UPSTREAM, balanced_subset, packaged_subset_bytes, simclr_subset
from harness.errors import UsageError

PACKAGED = resources.files("harness.data") / "imagenet_subsets"
WNIDS = ["n01440764", "n01443537", "n09999999"]  # two listed classes, one the list lacks


def _listed(percent: int) -> list[str]:
    return simclr_subset(percent)  # the copy shipped in the package, sha256-checked


def _mini_imagenet(root: Path) -> dict[str, list[str]]:
    """train/<wnid>/ holding every 1%-listed file of two wnids plus unlisted ones; tiny JPEGs."""
    listed = {w: [n for n in _listed(1) if n.startswith(w + "_")] for w in WNIDS}
    for w in WNIDS:
        names = listed[w] + [f"{w}_9000{i}.JPEG" for i in range(3)]
        for split, files in (("train", names), ("val", [f"ILSVRC2012_val_{w}_{i}.JPEG" for i in range(2)])):
            d = root / split / w
            d.mkdir(parents=True, exist_ok=True)
            for n in files:
                Image.new("RGB", (8, 8), (len(n) * 7 % 255, 90, 30)).save(d / n)
    return listed


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_packaged_lists_are_simclrs(no_network):
    source = (PACKAGED / "SOURCE.md").read_text()
    assert "google-research/simclr" in source and UPSTREAM.split("/master/")[1] in source
    for percent, (name, lines, sha) in SIMCLR_SUBSETS.items():
        # Decompressed independently of harness.data.subsets: the shipped bytes are upstream's.
        data = lzma.decompress((PACKAGED / f"{name}.xz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == sha and sha in source
        assert packaged_subset_bytes(percent) == data
        names = simclr_subset(percent)  # no path, no network
        assert len(names) == lines and len(set(names)) == lines
        assert all(n.endswith(".JPEG") and n.split("_")[0].startswith("n") for n in names)
    assert (len(simclr_subset(1)), len(simclr_subset(10))) == (12_811, 128_116)
    assert set(simclr_subset(1)) <= set(simclr_subset(10))  # SimCLR's 1 % images are among its 10 %


def test_user_copy_is_checked_and_used(tmp_path, no_network):
    for percent, (name, lines, _) in SIMCLR_SUBSETS.items():
        (tmp_path / name).write_bytes(packaged_subset_bytes(percent))
        assert simclr_subset(percent, tmp_path / name) == simclr_subset(percent)
    with pytest.raises(UsageError, match="subset list .* does not exist; expected SimCLR's 1percent.txt"):
        simclr_subset(1, tmp_path / "missing.txt")
    with pytest.raises(UsageError, match="no SimCLR subset for 5%"):
        simclr_subset(5)


@pytest.mark.parametrize("own_copy", [False, True], ids=["packaged", "subset_dir"])
def test_one_percent_protocol_selects_exactly_the_listed_files(tmp_path, no_network, own_copy):
    from evals.semi_supervised import SemiSupervised
    from harness.data.imagenet import ImageNetSuite
    from harness.pipeline import RunRequest, build_config

    listed = _mini_imagenet(tmp_path / "imagenet")
    assert len(listed["n01440764"]) > 5 and listed["n09999999"] == []
    overrides = {}
    if own_copy:  # a user's folder holding the upstream file, instead of the packaged copy
        (tmp_path / "lists").mkdir()
        (tmp_path / "lists" / "1percent.txt").write_bytes(packaged_subset_bytes(1))
        overrides["eval.semi_supervised.subset_dir"] = str(tmp_path / "lists")
    cfg = build_config(RunRequest(method="rotation", suite="imagenet", evals="semi_supervised",
                                  overrides=overrides))[0]
    assert cfg["eval.semi_supervised.subset_dir"] == overrides.get("eval.semi_supervised.subset_dir")
    suite = ImageNetSuite(root=tmp_path / "imagenet", image_size=32)
    train = suite.split("train")
    picked = SemiSupervised(cfg).subset(suite, train, 1, tmp_path / "eval")
    got = sorted(Path(train.samples[i][0]).name for i in picked)
    assert got == sorted(listed["n01440764"] + listed["n01443537"])
    assert all(train.classes[train.samples[i][1]] == Path(train.samples[i][0]).parent.name for i in picked)
    saved = (tmp_path / "eval" / "subset_1pct.txt").read_text().split()
    assert sorted(Path(s).name for s in saved) == got


def test_corrupted_list_fails_clearly(tmp_path, capsys):
    _mini_imagenet(tmp_path / "imagenet")
    bad = tmp_path / "lists"
    bad.mkdir()
    lines = packaged_subset_bytes(1).decode().splitlines()
    lines[5] = lines[5].replace(".JPEG", "1.JPEG")
    (bad / "1percent.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match="sha256 .* does not match SimCLR's 1percent.txt"):
        simclr_subset(1, bad / "1percent.txt")
    code = main(["run", "--method", "rotation", "--suite", "imagenet", "--epochs", "0", "--eval", "semi_supervised",
                 "--output-dir", str(tmp_path / "run"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 "train.batch_size=8", f"suite.root={tmp_path / 'imagenet'}", f"eval.semi_supervised.subset_dir={bad}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("harness: error:") and "does not match SimCLR's 1percent.txt" in err


def test_listed_file_missing_from_the_tree_is_named(tmp_path):
    from harness.data.subsets import select_listed
    from harness.data.imagenet import ImageNetSuite

    listed = _mini_imagenet(tmp_path / "imagenet")
    gone = listed["n01443537"][0]
    (tmp_path / "imagenet" / "train" / "n01443537" / gone).unlink()
    train = ImageNetSuite(root=tmp_path / "imagenet", image_size=32).split("train")
    with pytest.raises(UsageError, match=f"1 of .* not in the train folder \\(e.g. {gone}\\)"):
        select_listed(train.samples, _listed(1), train.classes)


def test_balanced_subset_is_seeded_and_class_balanced():
    labels = [c for c in range(4) for _ in range(50)] + [4] * 7
    a, b, c = balanced_subset(labels, 10, seed=0), balanced_subset(labels, 10, seed=0), balanced_subset(labels, 10, seed=1)
    assert a == b and a != c
    per_class = [sum(labels[i] == k for i in a) for k in range(5)]
    assert per_class == [5, 5, 5, 5, 1]
    with pytest.raises(UsageError):
        balanced_subset(labels, 0, seed=0)


def test_presets_match_reference():
    from evals.semi_supervised import SemiSupervised

    v2 = {k.split(".")[-1]: p.value for k, p in SemiSupervised.config_layer("simclr_v2").items() if hasattr(p, "value")}
    mm = {k.split(".")[-1]: p.value for k, p in SemiSupervised.config_layer("mmselfsup").items() if hasattr(p, "value")}
    # REFERENCE.md: SimCLR v2 fine-tunes 60 epochs for 1 %, 30 for 10 %.
    assert dict(zip(v2["fractions"], v2["epochs"])) == {1: 60, 10: 30}
    # REFERENCE.md: mmselfsup 20 epochs, batch 256, lr in {0.1, 0.01, 0.001}, head lr x{1, 10, 100},
    # wd 5e-4, steps [12, 16] x0.2.
    assert mm["epochs"] == [20, 20] and mm["batch_size"] == 256 and mm["weight_decay"] == 5e-4
    assert mm["lr"] in (0.1, 0.01, 0.001) and mm["head_lr_mult"] in (1, 10, 100)
    assert (mm["milestones"], mm["gamma"]) == ([12, 16], 0.2)


def test_rotation_gives_linear_knn_and_semi_supervised(tmp_path, capsys):
    import json

    from tests.conftest import TINY

    out = tmp_path / "run"
    code = main(["run", "--method", "rotation", "--epochs", "1", "--eval", "linear,knn,semi_supervised",
                 "--output-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *TINY,
                 "eval.semi_supervised.epochs=[3,2]"])
    assert code == 0, capsys.readouterr().err[-2000:]
    results = json.loads((out / "results.json").read_text())["results"]
    semi = results["semi_supervised"]
    for key in ("pct1_top1", "pct1_top5", "pct10_top1", "pct10_top5"):
        assert 0.0 <= semi[key] <= 100.0
    # 192 training images, under 100 per class: 1 % is one image per class, 10 % ceil(n / 10) each.
    assert semi["pct1_images"] == 10.0 and 20.0 <= semi["pct10_images"] <= 30.0
    assert {"linear", "knn"} <= set(results)
    saved = (out / "evals" / "semi_supervised" / "subset_10pct.txt").read_text().split()
    assert len(saved) == semi["pct10_images"] and all(s.endswith(".png") for s in saved)

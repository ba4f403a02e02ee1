"""The two data suites: the generated embedded suite and ImageNet read from a local root."""
from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import ImageFolder

from harness.data import digits as digits_mod
from harness.data.digits import PHOTO_SPLIT, DigitsSuite
from harness.data.imagenet import ImageNetSuite
from harness.errors import UsageError

CLASSES = [str(c) for c in range(10)]
SMALL = dict(image_size=16, train_copies=1, val_copies=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    suite = DigitsSuite(root=tmp_path_factory.mktemp("digits"), **SMALL)
    suite.prepare()
    return suite


def _pngs(root: Path, split: str) -> list[Path]:
    return sorted((root / split).rglob("*.png"))


# -- digits ------------------------------------------------------------------------------


def test_digits_layout_and_counts(small):
    root = small.prepare()
    assert root.name == "digits-v1-16px-t1-v1"
    assert (root / "MANIFEST.json").is_file()
    # A shared cache must stay readable by others: the folder follows the umask.
    umask = os.umask(0)
    os.umask(umask)
    assert root.stat().st_mode & 0o777 == 0o777 & ~umask
    target = load_digits().target
    per_class = np.bincount(target, minlength=10)
    m = small.manifest()
    for split in ("train", "val"):
        assert sorted(p.name for p in (root / split).iterdir()) == CLASSES
        files = _pngs(root, split)
        assert len(files) == m["counts"][split]["images"]
        # Stratified: every class loses round(20%) of its digits to val.
        counts = Counter(int(p.parent.name) for p in files)
        for c in range(10):
            n_val = int(round(per_class[c] * 0.2))
            assert counts[c] == (n_val if split == "val" else per_class[c] - n_val)
    assert m["counts"]["train"]["digits"] + m["counts"]["val"]["digits"] == 1797
    assert 0.18 < m["counts"]["val"]["digits"] / 1797 < 0.22


def test_digits_labels_follow_source_digit(small):
    target = load_digits().target
    for rel, rec in small.manifest()["files"].items():
        split, label, _ = rel.split("/")
        assert rec["split"] == split
        assert int(label) == rec["label"] == target[rec["digit"]]


def test_digits_train_val_disjoint(small):
    files = small.manifest()["files"].values()
    src = {s: {r["digit"] for r in files if r["split"] == s} for s in ("train", "val")}
    photos = {s: {r["photo"] for r in files if r["split"] == s} for s in ("train", "val")}
    assert src["train"].isdisjoint(src["val"])
    assert len(src["train"]) + len(src["val"]) == 1797
    assert photos["train"].isdisjoint(photos["val"])
    for s in ("train", "val"):
        assert photos[s] <= set(PHOTO_SPLIT[s])
    assert set(PHOTO_SPLIT["train"]).isdisjoint(PHOTO_SPLIT["val"])
    # One scene from two cameras must not straddle the split.
    split_of = {p: s for s, ps in PHOTO_SPLIT.items() for p in ps}
    assert split_of["motorcycle_left"] == split_of["motorcycle_right"]


def test_digits_images_have_size_and_vary(small):
    root = small.prepare()
    files = _pngs(root, "train")[::40] + _pngs(root, "val")[::10]
    arrays = []
    for f in files:
        with Image.open(f) as im:
            assert im.size == (16, 16) and im.mode == "RGB"
            arrays.append(np.asarray(im, dtype=np.float32))
    stack = np.stack(arrays)
    assert stack.std(axis=0).mean() > 20  # backgrounds and digits differ image to image
    assert stack.std(axis=(1, 2, 3)).min() > 5  # no blank image
    shas = [r["sha256"] for r in small.manifest()["files"].values()]
    assert len(set(shas)) == len(shas)


def test_digits_split_reads_as_imagefolder(small):
    ds = small.split("val")
    assert isinstance(ds, ImageFolder)
    assert ds.classes == CLASSES
    assert len(ds) == small.manifest()["counts"]["val"]["images"]
    img, label = ds[0]
    assert img.size == (16, 16) and label == 0


def test_digits_images_are_decoded_once_per_split(small, monkeypatch):
    ds = small.split("val")
    first, _ = ds[3]
    reads = []
    monkeypatch.setattr("PIL.Image.open", lambda *a, **k: reads.append(a) or pytest.fail("read again"))
    again, _ = ds[3]
    assert again is first and not reads
    assert np.array_equal(np.asarray(again), np.asarray(first))


def test_digits_generation_is_deterministic(small, tmp_path):
    other = DigitsSuite(root=tmp_path, **SMALL)
    assert other.data_dir != small.data_dir
    assert other.content_hash() == small.content_hash()
    assert other.verify() and small.verify()
    rel = sorted(small.manifest()["files"])[123]
    assert (other.prepare() / rel).read_bytes() == (small.prepare() / rel).read_bytes()


def test_digits_cache_is_reused(small):
    manifest = small.prepare() / "MANIFEST.json"
    before = manifest.stat().st_mtime_ns
    again = DigitsSuite(root=small.root, **SMALL)
    assert again.prepare() == small.prepare()
    assert again.content_hash() == small.content_hash()
    assert manifest.stat().st_mtime_ns == before


def test_digits_verify_detects_edit(tmp_path):
    suite = DigitsSuite(root=tmp_path, **SMALL)
    root = suite.prepare()
    victim = _pngs(root, "val")[0]
    Image.new("RGB", (16, 16)).save(victim)
    assert not DigitsSuite(root=tmp_path, **SMALL).verify()


def test_digits_interrupted_generation_leaves_no_cache(tmp_path, monkeypatch):
    real = digits_mod.png_bytes
    calls = {"n": 0}

    def dying(rgb):
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt
        return real(rgb)

    monkeypatch.setattr(digits_mod, "png_bytes", dying)
    suite = DigitsSuite(root=tmp_path, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        suite.prepare()
    assert not suite.data_dir.exists()
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(digits_mod, "png_bytes", real)
    assert DigitsSuite(root=tmp_path, **SMALL).verify()


def test_digits_race_both_end_with_valid_cache(tmp_path):
    suites = [DigitsSuite(root=tmp_path, **SMALL) for _ in range(2)]
    barrier = threading.Barrier(2)
    results, errors = [], []

    def go(s):
        try:
            barrier.wait()
            results.append((s.prepare(), s.content_hash()))
        except BaseException as e:  # noqa: BLE001 - surface anything in the main thread
            errors.append(e)

    threads = [threading.Thread(target=go, args=(s,)) for s in suites]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r for r in results}) == 1
    # The loser's temporary folder is gone; only the final cache remains.
    assert [p.name for p in tmp_path.iterdir()] == ["digits-v1-16px-t1-v1"]
    assert suites[0].verify()

    # The losing path, forced: a complete cache already sits at the target.
    before = suites[0].content_hash()
    late = DigitsSuite(root=tmp_path, **SMALL)
    late._generate_into(late.data_dir)
    assert [p.name for p in tmp_path.iterdir()] == ["digits-v1-16px-t1-v1"]
    assert late.content_hash() == before


def test_digits_defaults(tmp_path):
    suite = DigitsSuite(root=tmp_path)
    assert DigitsSuite.profile["data.image_size"] == 32
    assert suite.image_size == 32
    root = suite.prepare()
    assert root == tmp_path / "digits-v1-32px-t2-v1"
    m = json.loads((root / "MANIFEST.json").read_text())
    assert m["content_hash"] == suite.content_hash()
    assert m["counts"]["train"]["images"] == 2 * m["counts"]["train"]["digits"]
    assert m["counts"]["val"]["images"] == m["counts"]["val"]["digits"]
    train = [r for r in m["files"].values() if r["split"] == "train"]
    by_digit: dict[int, list] = {}
    for r in train:
        by_digit.setdefault(r["digit"], []).append((r["photo"], tuple(r["crop"])))
    assert all(len(v) == 2 and v[0] != v[1] for v in by_digit.values())
    with Image.open(_pngs(root, "train")[0]) as im:
        assert im.size == (32, 32)


def test_digits_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_HARNESS_DATA", str(tmp_path / "env"))
    assert DigitsSuite().data_dir == tmp_path / "env" / "digits-v1-32px-t2-v1"
    assert DigitsSuite(root=tmp_path / "r", image_size=24, train_copies=3).data_dir == (
        tmp_path / "r" / "digits-v1-24px-t3-v1"
    )
    monkeypatch.delenv("SSL_HARNESS_DATA")
    assert DigitsSuite().data_dir == Path.home() / ".cache" / "ssl-harness" / "digits-v1-32px-t2-v1"


@pytest.mark.parametrize(
    "kwargs",
    [dict(image_size=8), dict(train_copies=0), dict(val_copies=1.5), dict(train_copies="two"),
     dict(copies=2)],
)
def test_digits_rejects_bad_options(kwargs):
    with pytest.raises(UsageError):
        DigitsSuite(**kwargs)


# -- imagenet ----------------------------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n02119789"]


def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 255 - shade, 50)).save(path, format="JPEG")


def _train_tree(root: Path) -> None:
    for i, w in enumerate(WNIDS):
        for j in range(2):
            _jpeg(root / "train" / w / f"{w}_{j}.JPEG", 40 * i + j)


def _flat_val(root: Path) -> dict[str, str]:
    """Four flat val images; returns image id -> wnid, deliberately not in sorted order."""
    truth = {f"ILSVRC2012_val_{i:08d}": w for i, w in
             enumerate(["n02119789", "n01440764", "n02119789", "n01443537"], start=1)}
    for k, stem in enumerate(truth):
        _jpeg(root / "val" / f"{stem}.JPEG", 30 * k)
    return truth


def _write_kaggle_csv(path: Path, truth: dict[str, str]) -> None:
    lines = ["ImageId,PredictionString"]
    lines += [f"{stem},{w} 1 2 30 40 {w} 5 6 7 8" for stem, w in truth.items()]
    path.write_text("\n".join(lines) + "\n")


def _labels(ds) -> dict[str, str]:
    return {Path(p).stem: ds.classes[t] for p, t in ds.samples}


@pytest.mark.parametrize("root", [None, "does/not/exist"])
def test_imagenet_missing_root_is_one_line_usage_error(root, tmp_path):
    suite = ImageNetSuite(root=None if root is None else tmp_path / root)
    with pytest.raises(UsageError) as err:
        suite.prepare()
    msg = str(err.value)
    assert "\n" not in msg
    assert "train/<wnid>" in msg


def test_imagenet_malformed_root(tmp_path):
    (tmp_path / "val").mkdir()
    with pytest.raises(UsageError, match=r"train/<wnid>"):
        ImageNetSuite(root=tmp_path).prepare()
    _train_tree(tmp_path)
    with pytest.raises(UsageError, match="neither"):
        ImageNetSuite(root=tmp_path).prepare()


def test_imagenet_folder_layout(tmp_path):
    _train_tree(tmp_path)
    # val lacks the middle class: its labels must still index the train class list.
    _jpeg(tmp_path / "val" / WNIDS[0] / "a.JPEG", 1)
    _jpeg(tmp_path / "val" / WNIDS[2] / "b.JPEG", 2)
    suite = ImageNetSuite(root=str(tmp_path))
    assert suite.prepare() == tmp_path
    train = suite.split("train")
    assert train.classes == WNIDS and len(train) == 6
    val = suite.split("val", transform=lambda im: im.size)
    assert isinstance(val, ImageFolder)
    assert val.classes == WNIDS
    assert sorted(val.samples) == [
        (str(tmp_path / "val" / WNIDS[0] / "a.JPEG"), 0),
        (str(tmp_path / "val" / WNIDS[2] / "b.JPEG"), 2),
    ]
    assert val[0] == ((8, 8), 0)


def test_imagenet_val_folder_unknown_class(tmp_path):
    _train_tree(tmp_path)
    _jpeg(tmp_path / "val" / "n09999999" / "x.JPEG", 1)
    with pytest.raises(UsageError, match="n09999999"):
        ImageNetSuite(root=tmp_path).prepare()


def test_imagenet_flat_val_with_kaggle_csv(tmp_path):
    _train_tree(tmp_path)
    truth = _flat_val(tmp_path)
    gt = tmp_path.parent / f"{tmp_path.name}_gt" / "LOC_val_solution.csv"
    gt.parent.mkdir()
    _write_kaggle_csv(gt, truth)
    suite = ImageNetSuite(root=tmp_path, val_ground_truth=gt)
    val = suite.split("val")
    assert val.classes == WNIDS
    assert len(val) == 4
    assert _labels(val) == truth
    img, target = val[1]
    assert WNIDS[target] == truth["ILSVRC2012_val_00000002"] and img.size == (8, 8)


def test_imagenet_flat_val_finds_csv_in_root(tmp_path):
    _train_tree(tmp_path)
    truth = _flat_val(tmp_path)
    _write_kaggle_csv(tmp_path / "LOC_val_solution.csv", truth)
    assert _labels(ImageNetSuite(root=tmp_path).split("val")) == truth


def test_imagenet_flat_val_without_ground_truth(tmp_path):
    _train_tree(tmp_path)
    _flat_val(tmp_path)
    with pytest.raises(UsageError, match="val_ground_truth"):
        ImageNetSuite(root=tmp_path).prepare()


def test_imagenet_devkit_ground_truth(tmp_path):
    _train_tree(tmp_path)
    truth = _flat_val(tmp_path)
    # The devkit numbers classes in its own order, which is not the sorted-wnid order.
    id_order = ["n02119789", "n01443537", "n01440764"]
    devkit = tmp_path / "devkit"
    devkit.mkdir()
    gt = devkit / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{id_order.index(w) + 1}\n" for w in truth.values()))

    with pytest.raises(UsageError, match="val_synsets"):
        ImageNetSuite(root=tmp_path, val_ground_truth=gt).prepare()

    order_file = devkit / "synsets_in_id_order.txt"
    order_file.write_text("".join(f"{w} some words\n" for w in id_order))
    suite = ImageNetSuite(root=tmp_path, val_ground_truth=gt, val_synsets=order_file)
    assert _labels(suite.split("val")) == truth

    from scipy.io import savemat

    # meta.mat lists the leaf classes plus WordNet ancestors (num_children > 0) to skip.
    rows = [(i + 1, w, 0) for i, w in enumerate(id_order)] + [(4, "n00001740", 3)]
    rec = np.array(rows, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    savemat(devkit / "meta.mat", {"synsets": rec})
    suite = ImageNetSuite(root=tmp_path, val_ground_truth=gt)
    assert _labels(suite.split("val")) == truth

    # The same truth hashes alike whichever file states it.
    csv = tmp_path / "LOC_val_solution.csv"
    _write_kaggle_csv(csv, truth)
    assert ImageNetSuite(root=tmp_path, val_ground_truth=csv).content_hash() == suite.content_hash()


def test_imagenet_content_hash(tmp_path):
    _train_tree(tmp_path)
    _jpeg(tmp_path / "val" / WNIDS[0] / "a.JPEG", 1)
    h1 = ImageNetSuite(root=tmp_path).content_hash()
    assert len(h1) == 64
    assert ImageNetSuite(root=tmp_path).content_hash() == h1
    (tmp_path / "val" / "notes.txt").write_text("not an image")
    assert ImageNetSuite(root=tmp_path).content_hash() == h1
    _jpeg(tmp_path / "val" / WNIDS[1] / "b.JPEG", 2)
    assert ImageNetSuite(root=tmp_path).content_hash() != h1


def test_imagenet_rejects_unknown_option():
    with pytest.raises(UsageError, match="val_ground_truth"):
        ImageNetSuite(val_groundtruth="x.csv")

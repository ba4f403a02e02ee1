"""CIFAR / STL-10 suites: torchvision's archives exported once into the ImageFolder layout.
The archives are made here in torchvision's own format (no download in tests)."""
import json
import pickle

import numpy as np
import pytest
import torchvision.datasets.cifar as tv_cifar

from PIL import Image

from harness.cli import main
from harness.data.torchvision_suites import CIFAR10Suite, STL10Suite
from harness.errors import UsageError


def _fake_cifar10(root, per_batch=6):
    d = root / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}, f)


@pytest.fixture
def trusting_torchvision(monkeypatch):
    # The fake archives cannot match torchvision's md5 sums; everything else is its real reader.
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)


def test_cifar10_exports_imagefolder_with_labels(tmp_path, trusting_torchvision):
    _fake_cifar10(tmp_path)
    suite = CIFAR10Suite(root=tmp_path, download=False)
    train, val = suite.split("train"), suite.split("val")
    assert (len(train), len(val)) == (30, 6)
    tv = tv_cifar.CIFAR10(str(tmp_path / "cifar10"), train=True)
    # Same images, same labels, in torchvision's order (file i of the export is sample i).
    by_index = {int(p.rsplit("/", 1)[1][:6]): (p, y) for p, y in train.samples}
    for i in (0, 7, 29):
        path, y = by_index[i]
        assert train.classes[y] == tv.classes[tv.targets[i]]
        assert np.array_equal(np.asarray(train.loader(path)), np.asarray(tv[i][0]))
    h = suite.content_hash()
    assert CIFAR10Suite(root=tmp_path, download=False).content_hash() == h  # cached export, same hash


def test_missing_archive_is_one_line_error(tmp_path, capsys):
    with pytest.raises(UsageError, match="could not read or download cifar10"):
        CIFAR10Suite(root=tmp_path, download=False).prepare()
    code = main(["run", "--method", "rotation", "--suite", "cifar10", "--eval", "knn", f"suite.root={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("harness: error: suite 'cifar10'")


class FakeSTL10:
    classes = ["airplane", "bird"]

    def __init__(self, root, download, split):
        self.n = {"train": 4, "test": 2, "unlabeled": 5}[split]
        self.split = split

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        label = -1 if self.split == "unlabeled" else i % 2
        return Image.new("RGB", (96, 96), (i * 20, 0, 0)), label


@pytest.fixture
def fake_stl10(monkeypatch):
    monkeypatch.setattr(STL10Suite, "torchvision_dataset", lambda self, **kw: FakeSTL10(**kw))


def test_stl10_pretraining_adds_unlabeled_images(tmp_path, fake_stl10):
    suite = STL10Suite(root=tmp_path)
    pre = suite.pretrain_split()
    assert len(suite.split("train")) == 4 and len(pre) == 9
    assert sorted(pre.targets).count(-1) == 5 and set(suite.split("val").classes) == {"airplane", "bird"}


def test_label_needing_methods_pretrain_on_labelled_images_only(tmp_path, fake_stl10, capsys):
    # supervised reads every label: STL-10's unlabeled images (label -1) must never reach it.
    out = tmp_path / "run"
    code = main(["run", "--method", "supervised", "--suite", "stl10", "--epochs", "1", "--eval", "knn",
                 "--output-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 f"suite.root={tmp_path}", "data.image_size=32", "method.num_classes=2", "train.batch_size=2",
                 "train.warmup_epochs=0", "eval.knn.ks=[1]", "eval.knn.k=1"])
    assert code == 0, capsys.readouterr().err[-1500:]
    history = json.loads((out / "results.json").read_text())["pretrain_loss"]
    assert len(history) == 2  # 4 labelled images / batch 2; the 5 unlabeled ones would make it 4

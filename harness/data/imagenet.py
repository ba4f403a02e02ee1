"""ILSVRC-2012 (ImageNet-1k) read from a local copy the user provides.

Accepted layouts under the root::

    train/<wnid>/*.JPEG   and   val/<wnid>/*.JPEG            (ImageFolder layout)
    train/<wnid>/*.JPEG   and   val/*.JPEG + a ground truth   (the layout the tarballs unpack to)

The ground truth for a flat val folder is either Kaggle's ``LOC_val_solution.csv`` or the
devkit's ``ILSVRC2012_validation_ground_truth.txt``. Val labels are always indices into the
train class list, so a val folder that lacks a class can never shift the labels.
"""
from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, make_dataset

from harness.data.base import Suite
from harness.errors import UsageError

EXPECTED_LAYOUT = (
    "pass suite.root=/path/to/ILSVRC2012 containing train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
    "(or val/*.JPEG with LOC_val_solution.csv / ILSVRC2012_validation_ground_truth.txt)"
)

KAGGLE_GT = "LOC_val_solution.csv"
DEVKIT_GT = "ILSVRC2012_validation_ground_truth.txt"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _error(what: str) -> UsageError:
    # One line by contract (the CLI prints it as is): never let a path's repr add newlines.
    return UsageError(f"suite 'imagenet': {what}; {EXPECTED_LAYOUT}".replace("\n", " "))


class LabelledImageFolder(ImageFolder):
    """An ImageFolder whose classes and samples are given rather than found on disk.

    Used for val: its classes are the train wnids whatever folders val has, and a flat val
    folder gets its labels from a ground-truth file.
    """

    def __init__(self, root, classes, samples, transform=None, target_transform=None,
                 loader=default_loader):
        self._given_classes = list(classes)
        self._given_samples = [(str(p), int(t)) for p, t in samples]
        super().__init__(str(root), transform=transform, target_transform=target_transform,
                         loader=loader)

    def find_classes(self, directory):
        classes = list(self._given_classes)
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None,
                     allow_empty=False):
        return list(self._given_samples)


def read_kaggle_solution(path: Path) -> dict[str, str]:
    """``ImageId,PredictionString`` rows -> {image id: wnid}; the wnid is the first token."""
    labels: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise _error(f"{path} is not a LOC_val_solution.csv (header ImageId,PredictionString)")
        for row in reader:
            if len(row) < 2 or not row[1].split():
                continue
            labels[row[0].strip()] = row[1].split()[0]
    return labels


def read_devkit_ground_truth(path: Path, synsets: list[str]) -> dict[str, str]:
    """Line i (1-based) holds the ILSVRC2012_ID of ILSVRC2012_val_<i>; ids index ``synsets``."""
    labels: dict[str, str] = {}
    with open(path) as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    for i, line in enumerate(lines, start=1):
        try:
            idx = int(line)
        except ValueError:
            raise _error(f"{path} line {i} is not an integer class id: {line[:40]!r}") from None
        if not 1 <= idx <= len(synsets):
            raise _error(f"{path} line {i}: class id {idx} outside 1..{len(synsets)}")
        labels[f"ILSVRC2012_val_{i:08d}"] = synsets[idx - 1]
    return labels


def read_synsets(spec, train_classes: list[str]) -> list[str]:
    """The wnid of each ILSVRC2012_ID, in id order.

    ``spec`` is the devkit's ``meta.mat``, a text file with one wnid first on each line (e.g.
    ``LOC_synset_mapping.txt``, ``synset_words.txt``), a list of wnids, or ``"sorted"``
    (the sorted train wnids). The devkit's own id order is NOT the sorted order (id 1 is
    n02119789, not n01440764), so "sorted" is only right for ground truths made that way.
    """
    if isinstance(spec, (list, tuple)):
        return [str(w) for w in spec]
    if spec == "sorted":
        return sorted(train_classes)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise _error(f"val_synsets file {path} does not exist")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        # meta.mat also lists the WordNet ancestors; the 1000 classes are the leaves.
        leaves = [s for s in synsets if int(s["num_children"]) == 0]
        leaves.sort(key=lambda s: int(s["ILSVRC2012_ID"]))
        return [str(s["WNID"]) for s in leaves]
    with open(path) as f:
        return [ln.split()[0] for ln in f if ln.strip()]


class ImageNetSuite(Suite):
    """ILSVRC-2012 from a local root; nothing is downloaded."""

    name = "imagenet"
    description = "ILSVRC-2012 ImageNet-1k from a local copy (suite.root=...), 1000 classes"
    profile = {"data.image_size": 224}

    def __init__(self, root: str | Path | None = None, image_size: int = 224,
                 val_ground_truth: str | Path | None = None, val_synsets=None, **options):
        if options:
            raise UsageError(
                f"suite 'imagenet' got unknown option(s) {', '.join(sorted(options))}; "
                "known: root, image_size, val_ground_truth, val_synsets"
            )
        super().__init__(root=root, image_size=image_size)
        self.val_ground_truth = Path(val_ground_truth).expanduser() if val_ground_truth else None
        self.val_synsets = val_synsets
        self._prepared: Path | None = None
        self._classes: list[str] = []
        self._val_flat = False
        self._val_labels: dict[str, str] | None = None  # image id (file stem) -> wnid
        self._gt_path: Path | None = None
        self._hash: str | None = None

    # -- layout ---------------------------------------------------------------------------

    def prepare(self) -> Path:
        if self._prepared is not None:
            return self._prepared
        if self.root is None:
            raise UsageError(f"suite 'imagenet' needs a data root: {EXPECTED_LAYOUT}")
        root = self.root
        if not root.is_dir():
            raise _error(f"data root {root} does not exist or is not a folder")
        train, val = root / "train", root / "val"
        if not train.is_dir():
            raise _error(f"{root} has no train/ folder")
        with os.scandir(train) as it:
            classes = sorted(e.name for e in it if e.is_dir())
        if not classes:
            raise _error(f"{train} has no <wnid> class folders")
        if not val.is_dir():
            raise _error(f"{root} has no val/ folder")
        with os.scandir(val) as it:
            entries = list(it)
        val_dirs = sorted(e.name for e in entries if e.is_dir())
        val_files = [e.name for e in entries if e.is_file() and _is_image(e.name)]

        if val_dirs:
            unknown = sorted(set(val_dirs) - set(classes))
            if unknown:
                raise _error(
                    f"val/ has class folders that train/ lacks ({', '.join(unknown[:3])}"
                    f"{', ...' if len(unknown) > 3 else ''})"
                )
            self._val_flat = False
        elif val_files:
            self._val_flat = True
            self._val_labels = self._read_ground_truth(root, classes)
            missing = [n for n in val_files if Path(n).stem not in self._val_labels]
            if missing:
                raise _error(
                    f"{len(missing)} val images have no label in {self._gt_path} "
                    f"(e.g. {missing[0]})"
                )
            unknown = sorted({self._val_labels[Path(n).stem] for n in val_files} - set(classes))
            if unknown:
                raise _error(
                    f"{self._gt_path} labels val images with wnids that train/ lacks "
                    f"({', '.join(unknown[:3])}); check val_synsets"
                )
        else:
            raise _error(f"{val} has neither <wnid> folders nor images")

        self._classes = classes
        self._prepared = root
        return root

    def _find_ground_truth(self, root: Path) -> Path | None:
        if self.val_ground_truth is not None:
            if not self.val_ground_truth.is_file():
                raise _error(f"val_ground_truth {self.val_ground_truth} does not exist")
            return self.val_ground_truth
        candidates = [
            root / KAGGLE_GT,
            # Kaggle unpacks to <top>/ILSVRC/Data/CLS-LOC/{train,val} with the csv in <top>.
            *([root.parents[2] / KAGGLE_GT] if root.parts[-3:] == ("ILSVRC", "Data", "CLS-LOC")
              else []),
            root / DEVKIT_GT,
            root / "ILSVRC2012_devkit_t12" / "data" / DEVKIT_GT,
        ]
        return next((p for p in candidates if p.is_file()), None)

    def _read_ground_truth(self, root: Path, classes: list[str]) -> dict[str, str]:
        gt = self._find_ground_truth(root)
        if gt is None:
            raise _error(
                f"{root / 'val'} is flat (no <wnid> folders) and no ground truth was found; "
                f"pass suite.val_ground_truth=/path/to/{KAGGLE_GT} or {DEVKIT_GT}"
            )
        self._gt_path = gt
        if gt.suffix == ".csv":
            return read_kaggle_solution(gt)
        synsets = self.val_synsets
        if synsets is None:
            meta = gt.parent / "meta.mat"
            if not meta.is_file():
                # Guessing the id order would silently mislabel ~every val image.
                raise _error(
                    f"{gt.name} numbers classes in the devkit's meta.mat order; pass "
                    f"suite.val_synsets=/path/to/meta.mat (or a wnid-per-line file in id order, "
                    f"or 'sorted' if the ids follow sorted wnids)"
                )
            synsets = meta
        return read_devkit_ground_truth(gt, read_synsets(synsets, classes))

    # -- data -----------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        self.prepare()
        return list(self._classes)

    def split(self, split: str, transform=None) -> ImageFolder:
        root = self.prepare()
        if split != "val":
            return super().split(split, transform)
        classes = self._classes
        class_to_idx = {c: i for i, c in enumerate(classes)}
        val = root / "val"
        if self._val_flat:
            with os.scandir(val) as it:
                names = sorted(e.name for e in it if e.is_file() and _is_image(e.name))
            samples = [
                (str(val / n), class_to_idx[self._val_labels[Path(n).stem]]) for n in names
            ]
        else:
            samples = make_dataset(str(val), class_to_idx, extensions=IMG_EXTENSIONS,
                                   allow_empty=True)
        return LabelledImageFolder(val, classes, samples, transform=transform)

    def content_hash(self) -> str:
        """sha256 over sorted (relative path, size) of every image, plus the val labels.

        Sizes, not bytes: reading 1.28M JPEGs would take longer than many runs. Cached per
        instance because even the listing takes a while on network filesystems.
        """
        if self._hash is not None:
            return self._hash
        root = self.prepare()
        prefix = len(os.path.join(str(root), ""))
        entries: list[tuple[str, int]] = []
        for top in ("train", "val"):
            stack = [str(root / top)]
            while stack:
                d = stack.pop()
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_dir():
                            stack.append(e.path)
                        elif e.is_file() and _is_image(e.name):
                            rel = e.path[prefix:].replace(os.sep, "/")
                            entries.append((rel, e.stat().st_size))
        h = hashlib.sha256()
        for rel, size in sorted(entries):
            h.update(f"{rel}\t{size}\n".encode())
        if self._val_flat:
            # For a flat val the labels live outside the tree; hash the resolved labels of the
            # images present, not the file, so the csv and devkit forms of one truth hash alike.
            h.update(b"val-labels\n")
            stems = sorted(Path(rel).stem for rel, _ in entries if rel.count("/") == 1
                           and rel.startswith("val/"))
            for stem in stems:
                h.update(f"{stem}\t{self._val_labels[stem]}\n".encode())
        self._hash = h.hexdigest()
        return self._hash

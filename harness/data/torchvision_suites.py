"""CIFAR-10, CIFAR-100 and STL-10 through torchvision's dataset classes.

torchvision downloads and checks the archives (on a user's machine with a network; or
``suite.root`` already holds them). On first use the images are exported once into the
ImageFolder layout every suite is read through (``train/<class>/*.png``, ``val/<class>/*.png``,
and STL-10's ``unlabeled/unlabeled/*.png``), beside a manifest whose hash is recorded on
every run. STL-10's 100,000 unlabeled images join its 5,000 labelled ones for pretraining
(Coates et al. 2011: the unlabeled split exists for unsupervised learning).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

from torchvision.datasets import ImageFolder

from harness.data.base import Suite, data_home
from harness.errors import UsageError

EXPORT_VERSION = 1


class TorchvisionSuite(Suite):
    """A torchvision dataset exported to the ImageFolder layout; subclasses say which."""

    dataset_name: ClassVar[str] = ""
    native_size: ClassVar[int] = 32
    # split in the exported tree -> how to ask torchvision for it
    splits: ClassVar[dict[str, dict]] = {}
    pretrain_splits: ClassVar[tuple[str, ...]] = ("train",)

    def __init__(self, root: str | Path | None = None, image_size: int | None = None, download: bool = True, **options):
        if options:
            raise UsageError(f"suite '{self.name}' got unknown option(s) {', '.join(sorted(options))}; known: root, image_size, download")
        super().__init__(root=root, image_size=image_size or self.native_size)
        self.download = download
        self._manifest: dict | None = None

    @property
    def source_dir(self) -> Path:
        """Where torchvision keeps (or finds) the archives."""
        return (self.root or data_home() / "torchvision") / self.dataset_name

    @property
    def data_dir(self) -> Path:
        return (self.root or data_home()) / f"{self.dataset_name}-imagefolder-v{EXPORT_VERSION}"

    def torchvision_dataset(self, **kwargs):
        raise NotImplementedError

    def _load(self, spec: dict):
        try:
            return self.torchvision_dataset(root=str(self.source_dir), download=self.download, **spec)
        except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted", URLError
            raise UsageError(
                f"suite '{self.name}': could not read or download {self.dataset_name} into {self.source_dir} "
                f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); expected torchvision's archive "
                f"there, or pass suite.root=/folder/holding/it"
            ) from None

    def prepare(self) -> Path:
        final = self.data_dir
        if self._manifest is None:
            if not (final / "MANIFEST.json").is_file():
                self._export(final)
            self._manifest = json.loads((final / "MANIFEST.json").read_text())
        return final

    def _export(self, final: Path) -> None:
        from harness.progress import progress

        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
        try:
            digest = hashlib.sha256()
            counts = {}
            for split, spec in self.splits.items():
                ds = self._load(spec)
                classes = list(getattr(ds, "classes", [])) or ["unlabeled"]
                n = 0
                for i in progress(range(len(ds)), desc=f"{self.name}: exporting {split}", unit="img"):
                    img, label = ds[i]
                    cls = classes[label] if label is not None and label >= 0 else "unlabeled"
                    d = tmp / split / cls
                    d.mkdir(parents=True, exist_ok=True)
                    buf = io.BytesIO()  # hashed as written: no second read of 100k files
                    img.convert("RGB").save(buf, format="PNG")
                    (d / f"{i:06d}.png").write_bytes(buf.getvalue())
                    digest.update(f"{split}/{cls}/{i:06d}.png".encode())
                    digest.update(buf.getvalue())
                    n += 1
                counts[split] = n
            manifest = {"dataset": self.dataset_name, "version": EXPORT_VERSION, "counts": counts,
                        "content_hash": digest.hexdigest()}
            (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            try:
                os.rename(tmp, final)
            except OSError:  # another process exported it first: keep theirs
                if not (final / "MANIFEST.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def content_hash(self) -> str:
        self.prepare()
        return self._manifest["content_hash"]

    def pretrain_split(self, transform=None) -> ImageFolder:
        """The train split, plus the unlabeled one where the suite has it; those samples
        carry label -1, which no loss may read as a class."""
        ds = self.split("train", transform)
        for extra in self.pretrain_splits:
            if extra != "train":
                more = ImageFolder(str(self.prepare() / extra))
                ds.samples = ds.imgs = ds.samples + [(p, -1) for p, _ in more.samples]
                ds.targets = [s[1] for s in ds.samples]
        return ds


class CIFAR10Suite(TorchvisionSuite):
    name = "cifar10"
    description = "CIFAR-10 (torchvision download), 10 classes, 50k train / 10k test at 32x32"
    dataset_name = "cifar10"
    splits = {"train": {"train": True}, "val": {"train": False}}
    profile = {"data.image_size": 32, "data.eval_resize_ratio": 1.0}
    corruption_layout = "cifar-c"  # CIFAR-10-C / CIFAR-100-C: one .npy per corruption (Hendrycks & Dietterich 2019)

    def torchvision_dataset(self, **kwargs):
        from torchvision.datasets import CIFAR10

        return CIFAR10(**kwargs)


class CIFAR100Suite(CIFAR10Suite):
    name = "cifar100"
    description = "CIFAR-100 (torchvision download), 100 classes, 50k train / 10k test at 32x32"
    dataset_name = "cifar100"

    def torchvision_dataset(self, **kwargs):
        from torchvision.datasets import CIFAR100

        return CIFAR100(**kwargs)


class STL10Suite(TorchvisionSuite):
    name = "stl10"
    description = "STL-10 (torchvision download), 10 classes, 5k train + 100k unlabeled (pretraining) / 8k test at 96x96"
    dataset_name = "stl10"
    native_size = 96
    splits = {"train": {"split": "train"}, "val": {"split": "test"}, "unlabeled": {"split": "unlabeled"}}
    pretrain_splits = ("train", "unlabeled")
    profile = {"data.image_size": 96, "data.eval_resize_ratio": 1.0}

    def torchvision_dataset(self, **kwargs):
        from torchvision.datasets import STL10

        return STL10(**kwargs)

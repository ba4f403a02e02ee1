"""The suite interface: a suite names the data every protocol of a run reads."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torchvision is imported where data is read: `harness leaderboard build` needs none
    from torchvision.datasets import ImageFolder


def data_home() -> Path:
    """Where generated, downloaded and exported data lives: $SSL_HARNESS_DATA, else
    ~/.cache/ssl-harness."""
    import os

    env = os.environ.get("SSL_HARNESS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ssl-harness"


# The suite a run uses unless told otherwise: embedded, generated on first use, no download.
DEFAULT_SUITE = "glyphs"

# Kinds of data a suite provides and an eval needs (``Suite.provides``, ``Evaluator.needs``).
# An eval runs on every suite that provides all it needs; registering one edits no suite.
CLASSIFICATION = "classification"  # labelled train and val splits in the ImageFolder layout
DETECTION = "detection"  # detection scenes with boxes (VOC / COCO formats)
CORRUPTIONS = "corruptions"  # corrupted test sets (the ImageNet-C layout)
DATA_KINDS = {
    CLASSIFICATION: "labelled classification splits",
    DETECTION: "detection scenes",
    CORRUPTIONS: "corrupted test sets",
}


def describe_data(kind: str) -> str:
    return DATA_KINDS.get(kind, kind)


class Suite:
    """A benchmark suite.

    Subclasses set ``name``, ``description``, ``profile`` (flat dotted config defaults that
    sit between the method recipe and user overrides) and ``provides`` (the kinds of data
    it offers, which decide the evals it runs), and implement
    ``prepare`` (make the data available, return its root) and ``content_hash``.
    Every split is read with the same ImageFolder-layout reader (``root/<split>/<class>/*``),
    so the embedded suite and ImageNet share one code path.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    profile: ClassVar[dict] = {}
    provides: ClassVar[tuple[str, ...]] = (CLASSIFICATION,)
    # The layout of this suite's released corrupted test sets (``harness.data.corruptions``):
    # ImageNet-C's folders, or CIFAR-10-C's arrays.
    corruption_layout: ClassVar[str] = "imagenet-c"
    # Keep decoded images in memory after their first read: for suites small enough that
    # decoding would otherwise cost more than the training step (the embedded one).
    in_memory: ClassVar[bool] = False

    def __init__(self, root: str | Path | None = None, image_size: int = 224, **options):
        self.root = Path(root).expanduser() if root else None
        self.image_size = int(image_size)
        self.options = options
        # Set by the pipeline from data.train_subset: a fixed subset of the training split
        # used everywhere (pretraining, probe training, kNN bank), for quick runs.
        self.train_subset = 0

    def prepare(self) -> Path:
        raise NotImplementedError

    def content_hash(self) -> str:
        raise NotImplementedError

    def detection_splits(self, dataset: str):
        """Where ``dataset`` (``voc07+12`` or ``coco2017``) is for this suite, as
        ``harness.data.detection.DetectionSplits``; suites that provide DETECTION override it."""
        from harness.errors import UsageError

        raise UsageError(f"suite '{self.name}' has no detection data ({dataset}); it provides "
                         f"{', '.join(describe_data(k) for k in self.provides)}")

    def pretrain_split(self, transform=None) -> ImageFolder:
        """The images pretraining reads (the train split unless a suite adds unlabeled ones)."""
        return self.split("train", transform)

    def split(self, split: str, transform=None) -> ImageFolder:
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import default_loader

        root = self.prepare()
        loader = DecodedImageCache() if self.in_memory else default_loader
        ds = ImageFolder(str(root / split), transform=transform, loader=loader)
        if split == "train" and self.train_subset > 0:
            from harness.data.loading import subset_indices

            keep = subset_indices(len(ds.samples), self.train_subset)
            ds.samples = ds.imgs = [ds.samples[i] for i in keep]
            ds.targets = [s[1] for s in ds.samples]
        return ds


class DecodedImageCache:
    """An ImageFolder loader that decodes each file once per process and then returns the
    same RGB image. Transforms build new images and never draw on their input, so sharing
    one decoded image across epochs is safe."""

    def __init__(self):
        self._images: dict[str, object] = {}

    def __call__(self, path: str):
        img = self._images.get(path)
        if img is None:
            from torchvision.datasets.folder import default_loader

            img = self._images[path] = default_loader(path)
        return img

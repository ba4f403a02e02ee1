"""The suite interface: a suite names the data every protocol of a run reads."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torchvision.datasets import ImageFolder


class Suite:
    """A benchmark suite.

    Subclasses set ``name``, ``description``, ``profile`` (flat dotted config defaults that
    sit between the method recipe and user overrides) and ``supported_evals``, and implement
    ``prepare`` (make the data available, return its root) and ``content_hash``.
    Every split is read with the same ImageFolder-layout reader (``root/<split>/<class>/*``),
    so the embedded suite and ImageNet share one code path.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    profile: ClassVar[dict] = {}
    supported_evals: ClassVar[tuple[str, ...]] = ("linear", "knn")

    def __init__(self, root: str | Path | None = None, image_size: int = 224, **options):
        self.root = Path(root).expanduser() if root else None
        self.image_size = int(image_size)
        self.options = options

    def prepare(self) -> Path:
        raise NotImplementedError

    def content_hash(self) -> str:
        raise NotImplementedError

    def split(self, split: str, transform=None) -> ImageFolder:
        root = self.prepare()
        return ImageFolder(str(root / split), transform=transform)

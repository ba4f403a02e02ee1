"""The evaluation plugin interface.

An evaluator reads a frozen, pretrained method through ``method.features`` and returns a
dict of metrics. Its hyperparameters live under ``eval.<name>.*`` and come from a named
preset of a published protocol; the preset's name is part of every result it produces.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.config import Config
from harness.errors import UsageError


class Evaluator:
    name: ClassVar[str] = ""
    protocol: ClassVar[str] = ""
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""
    default_preset: ClassVar[str] = ""
    # preset name -> {key (without the eval.<name>. prefix): P(value, source)}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # Headline metrics, shown on the leaderboard; every evaluator reports top1 and top5.
    headline: ClassVar[tuple[str, ...]] = ("top1", "top5")

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.params = cfg.section(f"eval.{self.name}")

    @property
    def preset(self) -> str:
        return self.params["preset"]

    @classmethod
    def config_layer(cls, preset: str | None) -> dict[str, Any]:
        """Flat config values for ``preset`` (the default one when None)."""
        preset = preset or cls.default_preset
        if preset not in cls.presets:
            raise UsageError(f"eval '{cls.name}' has no preset '{preset}'; presets: {', '.join(cls.presets)}")
        layer = {f"eval.{cls.name}.preset": preset}
        layer.update({f"eval.{cls.name}.{k}": v for k, v in cls.presets[preset].items()})
        return layer

    def run(self, method, suite, device: torch.device, out_dir: Path) -> dict[str, float]:
        raise NotImplementedError

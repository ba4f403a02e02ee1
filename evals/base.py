"""The evaluation plugin interface.

An evaluator reads a frozen, pretrained method through ``method.features`` and returns a
dict of metrics. It declares:

- ``metrics`` and ``headline``: every metric it reports that a reader should rank (name,
  higher or lower is better, unit) and which one is its headline (``harness.metrics``);
- ``needs``: the kinds of data it reads (``harness.data.base``: labelled classification
  splits, detection scenes, corrupted test sets); it runs on every suite that provides them;
- ``presets``: its hyperparameters under ``eval.<name>.*``, each preset a published
  protocol, whose name is part of every result it produces;
- ``rules``: checks of those hyperparameters, applied when the config is resolved, before
  any work (``harness.config``'s rule helpers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.config import Config, Rule, check
from harness.data.base import CLASSIFICATION
from harness.errors import UsageError
from harness.metrics import HIGHER, Declaration, Metric


def top1(description: str = "top-1 accuracy") -> Metric:
    """The classification evals' headline: top-1 accuracy in %, higher is better."""
    return Metric("top1", HIGHER, "%", description)


def top5(description: str = "top-5 accuracy") -> Metric:
    return Metric("top5", HIGHER, "%", description)


class Evaluator:
    name: ClassVar[str] = ""
    protocol: ClassVar[str] = ""
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""
    default_preset: ClassVar[str] = ""
    # preset name -> {key (without the eval.<name>. prefix): P(value, source)}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # What it reports that a reader ranks, and which of those is the headline.
    metrics: ClassVar[tuple[Metric, ...]] = (top1(), top5())
    headline: ClassVar[str] = "top1"
    needs: ClassVar[tuple[str, ...]] = (CLASSIFICATION,)
    # key (without the eval.<name>. prefix) -> rule, checked before any work.
    rules: ClassVar[dict[str, Rule]] = {}
    # Hyperparameters that change what a result measures, not only how well (detection's
    # backend): named after the preset in every result ("voc_c4/torchvision"), so no table
    # pools results made under different values.
    variant_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config, feature_cache: str | Path | None = None):
        """``feature_cache``: the run's folder of features shared between evals (the run
        folder gives it); None keeps an eval's features in its own output folder."""
        self.cfg = cfg
        self.params = cfg.section(f"eval.{self.name}")
        self.feature_cache = Path(feature_cache) if feature_cache is not None else None

    def feature_dir(self, out_dir: str | Path) -> Path:
        """Where this eval caches frozen features: the run's shared cache, else its own folder."""
        return self.feature_cache if self.feature_cache is not None else Path(out_dir) / "features"

    @classmethod
    def preset_label(cls, cfg: Config) -> str:
        """The preset's name, with the values of ``variant_keys``: what results are labelled with."""
        p = cfg.section(f"eval.{cls.name}")
        return "/".join([p["preset"], *(str(p[k]) for k in cls.variant_keys)])

    @property
    def preset(self) -> str:
        return self.preset_label(self.cfg)

    def declaration(self) -> Declaration:
        """What this eval's result reports and ranks by; an eval whose headline depends on what
        run() found (robustness without a normaliser) overrides it."""
        return Declaration.of(type(self))

    def result_tags(self) -> dict[str, str]:
        """Tags for the eval's tracked run, known once run() returned (which data, which normaliser)."""
        return {}

    def artifacts(self, out_dir: Path) -> list[Path]:
        """Files run() wrote into ``out_dir`` that belong on the tracked run's page (figures)."""
        return []

    @classmethod
    def config_layer(cls, preset: str | None) -> dict[str, Any]:
        """Flat config values for ``preset`` (the default one when None)."""
        preset = preset or cls.default_preset
        if preset not in cls.presets:
            raise UsageError(f"eval '{cls.name}' has no preset '{preset}'; presets: {', '.join(cls.presets)}")
        layer = {f"eval.{cls.name}.preset": preset}
        layer.update({f"eval.{cls.name}.{k}": v for k, v in cls.presets[preset].items()})
        return layer

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Raises a one-line UsageError for a bad ``eval.<name>.*`` value. Override to check
        values against each other (call super() for the per-key rules)."""
        check(cfg, cls.rules, f"eval.{cls.name}.")

    def run(self, method, suite, device: torch.device, out_dir: Path) -> dict[str, float]:
        raise NotImplementedError

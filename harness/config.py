"""Layered run configuration: method recipe < suite profile < user overrides.

A config is a flat mapping of dotted keys (``train.lr``, ``method.patch_size``) to plain
values, with, beside it, where every value came from (a paper and table, a suite profile, or
the command line). The set of keys the layers define is the schema: an override naming any
other key is rejected with the close matches, so a typo never silently does nothing.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from harness.errors import UsageError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-6`` (no dot) as a string; on a command line it means a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class P:
    """A recipe value and the source it comes from (paper, table, official command)."""

    value: Any
    source: str


HARNESS = "harness default"

# Machinery defaults. Methods, suites and evals override them in their own layers.
DEFAULTS: dict[str, P] = {
    "seed": P(0, HARNESS),
    "method.name": P(None, HARNESS),
    "method.recipe": P("default", HARNESS),
    "backbone.name": P("resnet50", HARNESS),
    "backbone.width": P(1, HARNESS),
    "backbone.norm": P("batch", HARNESS),
    "backbone.zero_init_residual": P(False, "torchvision resnet: zero_init_residual=False (ResNet v1 backbones only)"),
    "backbone.probe_layer": P("pre_logits", "Kolesnikov et al. 2019, Table 1: the pre-logits representation"),
    "suite.name": P("digits", HARNESS),
    "suite.root": P(None, HARNESS),
    "data.image_size": P(224, HARNESS),
    "data.eval_resize_ratio": P(256 / 224, "ImageNet convention: Resize 256 + CenterCrop 224"),
    "data.num_workers": P(0, HARNESS),
    "data.train_subset": P(0, "harness default (0 = every training image)"),
    "train.epochs": P(100, HARNESS),
    "train.batch_size": P(256, HARNESS),
    "train.optimizer": P("sgd", HARNESS),
    "train.lr": P(0.1, HARNESS),
    "train.momentum": P(0.9, HARNESS),
    "train.nesterov": P(False, HARNESS),
    "train.weight_decay": P(1e-4, HARNESS),
    "train.betas": P([0.9, 0.999], HARNESS),
    "train.lars_eta": P(0.001, "You et al. 2017 (LARS trust coefficient)"),
    "train.warmup_epochs": P(0, HARNESS),
    "train.min_lr_ratio": P(0.0, HARNESS),
    "train.schedule": P("cosine", HARNESS),
    "train.decay_epochs": P([], "harness default (used by train.schedule=step)"),
    "train.grad_clip": P(0.0, "harness default (0 = no clipping)"),
    "train.amp": P(True, "harness default (used on GPU only)"),
    "train.deterministic": P(None, "DESIGN.md: deterministic algorithms; null = on for CPU, off for GPU"),
    "train.checkpoint_every": P(200, "harness default (steps)"),
    "train.log_every": P(10, "harness default (steps)"),
    "device": P("auto", "harness default (cuda if available, else cpu)"),
}

# Keys that change how a run executes but not what it computes: excluded from the hash so
# that, e.g., more loader workers still resume the same run directory.
NON_SEMANTIC = {
    "data.num_workers",
    "train.checkpoint_every",
    "train.log_every",
    "suite.root",
    "device",
}


USER_SOURCE = "command line"  # the source recorded for values the user set


@dataclass
class Config:
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def user_set(self, key: str) -> bool:
        """Whether ``key`` was set by the user (command line or overrides), not a recipe or profile."""
        return self.sources.get(key) == USER_SOURCE

    def section(self, prefix: str) -> dict[str, Any]:
        """Values under ``prefix.`` with the prefix stripped (``section('train')['lr']``)."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.values.items() if k.startswith(p)}

    @property
    def hash(self) -> str:
        semantic = {k: v for k, v in self.values.items() if k not in NON_SEMANTIC}
        blob = json.dumps(semantic, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def to_dict(self) -> dict:
        return {
            "config_hash": self.hash,
            "values": dict(sorted(self.values.items())),
            "sources": dict(sorted(self.sources.items())),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Config":
        return cls(values=dict(d["values"]), sources=dict(d.get("sources", {})))


def _unpack(layer: Mapping[str, Any], default_source: str) -> dict[str, P]:
    return {k: v if isinstance(v, P) else P(v, default_source) for k, v in layer.items()}


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UsageError(f"override '{text}' is not key=value (e.g. train.lr=0.05)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _coerce(key: str, value: Any, default: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise UsageError(f"{key}={value!r}: expected true or false")
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{key}={value!r}: expected a number (default {default!r})")
        return float(value) if isinstance(default, float) else value
    if isinstance(default, str) and not isinstance(value, str):
        return str(value)
    if isinstance(default, list) and not isinstance(value, list):
        raise UsageError(f"{key}={value!r}: expected a list like [a, b] (default {default!r})")
    return value


def resolve(layers: list[tuple[str, Mapping[str, Any]]], overrides: Mapping[str, Any]) -> Config:
    """Merge ``layers`` (name, flat mapping) in order, then apply user ``overrides``.

    Every key a layer introduces joins the schema; overrides may only name schema keys.
    """
    merged: dict[str, P] = dict(DEFAULTS)
    for name, layer in layers:
        merged.update(_unpack(layer, name))
    for key, value in overrides.items():
        if key not in merged:
            close = difflib.get_close_matches(key, list(merged), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see the resolved config keys with `harness run --print-config`"
            raise UsageError(f"unknown config key '{key}'{hint}")
        merged[key] = P(_coerce(key, value, merged[key].value), USER_SOURCE)
    return Config(
        values={k: p.value for k, p in merged.items()},
        sources={k: p.source for k, p in merged.items()},
    )

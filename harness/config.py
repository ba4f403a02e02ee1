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
from typing import Any, Callable, Mapping

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
    "suite.name": P(None, "harness default: set from --suite"),
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

    @property
    def config_id(self) -> str:
        """The hash without the seed: every seed of one command shares it."""
        semantic = {k: v for k, v in self.values.items() if k not in NON_SEMANTIC and k != "seed"}
        return hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()

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


# Keys whose layers give whole numbers but which take fractions too (a width multiplier of
# 0.25, half an epoch of warmup). Every other key that every layer gives as an integer is one.
FRACTIONAL = {"backbone.width", "train.warmup_epochs"}


def _coerce(key: str, value: Any, default: Any, integer: bool = False) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise UsageError(f"{key}={value!r}: expected true or false")
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{key}={value!r}: expected a number (default {default!r})")
        if integer:
            # train.epochs=0.5 would otherwise train int(0.5) = 0 steps without a word.
            if not float(value).is_integer():
                raise UsageError(f"{key}={value!r}: expected an integer (default {default!r})")
            return int(value)
        return float(value) if isinstance(default, float) else value
    if isinstance(default, str) and not isinstance(value, str):
        return str(value)
    if isinstance(default, list) and not isinstance(value, list):
        raise UsageError(f"{key}={value!r}: expected a list like [a, b] (default {default!r})")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve(layers: list[tuple[str, Mapping[str, Any]]], overrides: Mapping[str, Any]) -> Config:
    """Merge ``layers`` (name, flat mapping) in order, then apply user ``overrides``.

    Every key a layer introduces joins the schema; overrides may only name schema keys.
    """
    merged: dict[str, P] = dict(DEFAULTS)
    # A key is an integer when every layer that sets it gives an integer (and it is not FRACTIONAL).
    whole = {k: _is_int(p.value) for k, p in merged.items()}
    for name, layer in layers:
        unpacked = _unpack(layer, name)
        merged.update(unpacked)
        for k, p in unpacked.items():
            whole[k] = whole.get(k, True) and _is_int(p.value)
    for key, value in overrides.items():
        if key not in merged:
            close = difflib.get_close_matches(key, list(merged), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see the resolved config keys with `harness run --print-config`"
            raise UsageError(f"unknown config key '{key}'{hint}")
        as_int = whole.get(key, False) and key not in FRACTIONAL
        merged[key] = P(_coerce(key, value, merged[key].value, as_int), USER_SOURCE)
    return Config(
        values={k: p.value for k, p in merged.items()},
        sources={k: p.source for k, p in merged.items()},
    )


# -- layers ----------------------------------------------------------------------------------

def method_layers(method_cls, recipe: str, suite_cls) -> list[tuple[str, dict]]:
    """A method's layers for ``resolve``: its recipe, then its profile for the suite. A suite
    may name another whose profiles fit it (``profile_from``: the same image size and budget);
    a method's profile for that one comes first, its own profile for the suite on top."""
    if recipe not in method_cls.recipes:
        raise UsageError(f"method '{method_cls.name}' has no recipe '{recipe}'; recipes: {', '.join(method_cls.recipes)}")
    layers = [(f"{method_cls.name} recipe '{recipe}'", method_cls.recipes[recipe])]
    for suite in (getattr(suite_cls, "profile_from", None), suite_cls.name):
        if suite in method_cls.suite_profiles:
            layers.append((f"{method_cls.name} profile for suite '{suite}'", method_cls.suite_profiles[suite]))
    return layers


# -- checks ----------------------------------------------------------------------------------
# A rule is a function (key, value) -> None that raises a one-line UsageError naming the key,
# the value and what is expected. Every rule runs when the config is resolved, before a run
# folder or an MLflow run exists, so a bad value never costs a pretraining.

Rule = Callable[[str, Any], None]


def _bad(key: str, value: Any, expected: str) -> UsageError:
    return UsageError(f"{key}={value!r}: expected {expected}")


def one_of(*options) -> Rule:
    def rule(key, value):
        if value not in options:
            raise _bad(key, value, f"one of {', '.join(map(str, options))}")
    return rule


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A number in [lo, hi] (open ends where asked)."""
    def rule(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(key, value, "a number")
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            left = "-inf" if lo is None else f"{lo:g}"
            right = "inf" if hi is None else f"{hi:g}"
            raise _bad(key, value, f"a number in {'(' if lo_open or lo is None else '['}{left}, "
                                   f"{right}{')' if hi_open or hi is None else ']'}")
    return rule


def integer(lo: int = 0, hi: int | None = None) -> Rule:
    def rule(key, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(key, value, "an integer")
        if value < lo or (hi is not None and value > hi):
            raise _bad(key, value, f"an integer from {lo}" + (f" to {hi}" if hi is not None else " up"))
    return rule


def each(rule: Rule) -> Rule:
    """Every element of a list."""
    def check(key, value):
        if not isinstance(value, (list, tuple)):
            raise _bad(key, value, "a list like [a, b]")
        for v in value:
            rule(key, v)
    return check


def optional(rule: Rule) -> Rule:
    def check(key, value):
        if value is not None:
            rule(key, value)
    return check


def registered(kind: str) -> Rule:
    """The name of an installed plugin of ``kind`` (an unknown name lists the known ones)."""
    def rule(key, value):
        from harness import registry

        if not isinstance(value, str):
            raise _bad(key, value, f"a {kind[:-1]} name")
        try:
            registry.REGISTRIES[kind].get(value)
        except UsageError as e:
            raise UsageError(f"{key}={value!r}: {e}") from None
    return rule


def _optimizer(key, value):
    from harness.optim import OPTIMIZERS

    one_of(*OPTIMIZERS)(key, value)


def _schedule(key, value):
    from harness.optim import SCHEDULES

    one_of(*SCHEDULES)(key, value)


def _probe_layer(key, value):
    from harness.backbones.readout import PROBE_LAYERS

    one_of(*PROBE_LAYERS)(key, value)


def _device(key, value):
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise _bad(key, value, "auto, cpu, cuda, cuda:<index> or mps")


# torch.manual_seed takes at most 64 bits; a larger seed would fail deep inside a run.
MAX_SEED = 2**63 - 1

HARNESS_RULES: dict[str, Rule] = {
    "seed": integer(0, MAX_SEED),
    "backbone.name": registered("backbones"),
    "backbone.width": number(0, lo_open=True),
    "backbone.probe_layer": _probe_layer,
    "data.image_size": integer(1),
    "data.eval_resize_ratio": number(1),
    "data.num_workers": integer(0),
    "data.train_subset": integer(0),
    "train.epochs": integer(0),
    "train.batch_size": integer(1),
    "train.optimizer": _optimizer,
    "train.lr": number(0),
    "train.momentum": number(0),
    "train.weight_decay": number(0),
    "train.warmup_epochs": number(0),
    "train.min_lr_ratio": number(0),
    "train.schedule": _schedule,
    "train.decay_epochs": each(number(0)),
    "train.grad_clip": number(0),
    "train.deterministic": optional(one_of(True, False)),
    "train.checkpoint_every": integer(1),
    "train.log_every": integer(1),
    "device": _device,
}


def check(cfg: Config, rules: Mapping[str, Rule], prefix: str = "") -> None:
    """Applies ``rules`` (keyed by the part after ``prefix``) to the config's values."""
    for key, rule in rules.items():
        full = prefix + key
        if full in cfg.values:
            rule(full, cfg.values[full])

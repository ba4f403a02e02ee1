"""Metric declarations: what an eval reports, which direction is better, in what unit, and
which metric is its headline.

Every consumer of results (the run summary, the run folder's results file, studies, the
leaderboard) reads these declarations instead of assuming an accuracy: detection reports AP (higher is
better), robustness mCE (lower is better), a plugin whatever it declares. The declarations
travel with each result (a tag on its MLflow run, a field in its metrics file), so a reader
never needs the eval's code to rank its numbers.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from harness.errors import RunFailed, UsageError

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Metric:
    """One reported number: ``name`` (its key in the eval's result), whether higher or
    lower is better, its unit (``%``, ``AP``, or ``""``) and a short description."""

    name: str
    direction: str = HIGHER
    unit: str = "%"
    description: str = ""
    # Shown on a suite's home page beside its eval's headline (semi-supervised's 10 % result).
    featured: bool = False

    def __post_init__(self):
        if self.direction not in (HIGHER, LOWER):
            raise ValueError(f"metric {self.name!r}: direction {self.direction!r}, expected {HIGHER!r} or {LOWER!r}")

    @property
    def higher_is_better(self) -> bool:
        return self.direction == HIGHER

    def format(self, value: float) -> str:
        text = f"{value:.2f}"
        return f"{text}%" if self.unit == "%" else f"{text} {self.unit}".rstrip()


@dataclass(frozen=True)
class Declaration:
    """An eval's metrics and its headline (one of them)."""

    metrics: tuple[Metric, ...]
    headline: str

    def __post_init__(self):
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names declared twice: {names}")
        if self.headline not in names:
            raise ValueError(f"headline {self.headline!r} is not among the declared metrics {names}")

    @classmethod
    def of(cls, evaluator) -> "Declaration":
        """The declaration of an evaluator class (its ``metrics`` and ``headline``)."""
        metrics, headline = tuple(getattr(evaluator, "metrics", ())), getattr(evaluator, "headline", None)
        name = getattr(evaluator, "name", evaluator)
        if not metrics or not isinstance(headline, str):
            raise UsageError(f"eval '{name}' declares no metrics: an evaluator sets `metrics` (Metric "
                             f"declarations) and `headline` (the name of one of them)")
        try:
            return cls(metrics, headline)
        except ValueError as e:
            raise UsageError(f"eval '{name}': {e}") from None

    def get(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    @property
    def headline_metric(self) -> Metric:
        return self.get(self.headline)

    def check(self, eval_name: str, reported: dict) -> dict[str, float]:
        """The reported metrics as floats; the headline must be among them and every value a
        number (a run never records a silently missing or non-numeric result)."""
        out = {}
        for key, value in reported.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RunFailed(f"eval '{eval_name}' reported {key}={value!r}: expected a number")
            out[key] = float(value)
        if self.headline not in out:
            raise RunFailed(f"eval '{eval_name}' did not report its headline metric '{self.headline}' "
                            f"(reported: {', '.join(sorted(out)) or 'nothing'})")
        if not math.isfinite(out[self.headline]):
            raise RunFailed(f"eval '{eval_name}' reported {self.headline}={out[self.headline]}: not a finite number")
        return out

    def summary(self, values: dict) -> str:
        """One line: the headline first, then the other declared metrics reported."""
        order = [self.headline_metric] + [m for m in self.metrics if m.name != self.headline]
        parts = [f"{m.name} {m.format(values[m.name])}" + (" (lower is better)" if not m.higher_is_better else "")
                 for m in order if m.name in values]
        return "  ".join(parts)

    def to_dict(self) -> dict:
        return {"headline": self.headline, "metrics": [asdict(m) for m in self.metrics]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict | None) -> "Declaration | None":
        """The declaration a result recorded (``to_dict``); None when absent or unreadable."""
        try:
            return cls(tuple(Metric(**m) for m in data["metrics"]), data["headline"])
        except (ValueError, TypeError, KeyError):
            return None

    @classmethod
    def from_json(cls, text: str | None) -> "Declaration | None":
        try:
            return cls.from_dict(json.loads(text)) if text else None
        except ValueError:
            return None

"""Published numbers ("claims") as data, matched to reproduced entries.

``data/claims.csv`` holds one published number per line: suite, method, backbone, width,
epochs (empty: any), protocol, preset (``*``: the paper's own protocol, shown beside any
preset and said so), metric, value and its source (from ../shared/REFERENCE.md and
solo-learn's README tables). A claim sits beside a reproduction when suite, method, backbone,
width, epochs (when given), protocol, preset and metric match.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Claim:
    suite: str
    method: str
    backbone: str
    width: str
    epochs: str
    protocol: str
    preset: str
    metric: str
    value: float
    source: str

    def matches(self, key: dict, protocol: str, preset: str, metric: str) -> bool:
        return (self.suite == str(key["suite"]) and self.method == str(key["method"])
                and self.backbone == str(key["backbone"]) and _same_number(self.width, key["width"])
                and (not self.epochs or _same_number(self.epochs, key["epochs"]))
                and self.protocol == protocol and self.preset in ("*", preset) and self.metric == metric)


def _same_number(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b))
    except (TypeError, ValueError):
        return str(a) == str(b)


def load_claims(text: str | None = None) -> list[Claim]:
    """The claims shipped with the package (or those in ``text``, CSV with the same header)."""
    if text is None:
        text = resources.files("leaderboard").joinpath("data/claims.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text))
    return [Claim(**{**r, "value": float(r["value"])}) for r in rows]


def compare(claim: Claim, mean: float, std: float | None, n: int) -> dict:
    """Our mean beside the claim: the difference and whether it lies within the seed spread
    (|difference| <= one sample std; unknown with one seed)."""
    diff = mean - claim.value
    if n < 2 or std is None or not math.isfinite(std):
        verdict = "one seed: spread unknown"
    else:
        verdict = "within the seed spread" if abs(diff) <= std else "outside the seed spread"
    return {"claimed": claim.value, "source": claim.source, "difference": diff, "verdict": verdict,
            "own_protocol": claim.preset == "*"}

"""Corruption error, mCE and relative mCE (Hendrycks & Dietterich 2019, section 3).

    CE_c          = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}
    relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)
    mCE           = mean of CE_c over the 15 corruptions (the 4 extra ones are reported apart)

Errors are fractions here; results report them in % (x100), as the paper does.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.data.corruptions import EXTRA_CORRUPTIONS, MCE_CORRUPTIONS, SEVERITIES

SOURCE = "Hendrycks & Dietterich 2019, hendrycks/robustness (AlexNet top-1 errors on ImageNet-C)"
# AlexNet's top-1 error on ImageNet-C per corruption and severity (fractions), and on the clean
# val set: the normaliser of every ImageNet mCE (../shared/REFERENCE.md, "AlexNet errors on ImageNet-C").
ALEXNET_IMAGENET_CLEAN = 0.4345
ALEXNET_IMAGENET_C = {
    "gaussian_noise": (.69528, .82542, .93554, .98138, .99452),
    "shot_noise": (.71224, .85108, .93574, .98182, .99146),
    "impulse_noise": (.78374, .89808, .94870, .98720, .99548),
    "defocus_blur": (.65624, .73202, .85036, .91364, .94714),
    "glass_blur": (.64308, .75054, .88806, .91622, .93344),
    "motion_blur": (.58430, .70048, .82108, .89750, .92638),
    "zoom_blur": (.70008, .76992, .80784, .84198, .87198),
    "snow": (.71726, .88392, .86468, .91870, .94952),
    "frost": (.61390, .79734, .88790, .89942, .93430),
    "fog": (.67474, .76050, .84378, .87260, .94500),
    "brightness": (.45140, .48502, .54048, .62166, .72440),
    "contrast": (.64548, .76150, .88874, .97760, .99270),
    "elastic_transform": (.52596, .70116, .55686, .64076, .80554),
    "pixelate": (.52218, .54620, .73728, .87092, .91262),
    "jpeg_compression": (.51002, .54718, .57294, .65458, .74778),
}
# Only the means of the extra corruptions are published; they are reported apart, unnormalised.
ALEXNET_IMAGENET_C_EXTRA_MEAN = {"speckle_noise": .845388, "gaussian_blur": .787108, "spatter": .717512,
                                 "saturate": .658248}


@dataclass(frozen=True)
class ErrorTable:
    """Top-1 errors (fractions): ``clean`` and ``by_corruption[c][s - 1]`` for severities 1-5."""

    clean: float
    by_corruption: dict[str, tuple[float, ...]]

    def to_dict(self) -> dict:
        return {"clean": self.clean, "by_corruption": {c: list(v) for c, v in self.by_corruption.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ErrorTable":
        return cls(float(d["clean"]), {c: tuple(float(x) for x in v) for c, v in d["by_corruption"].items()})

    @classmethod
    def mean(cls, tables: list["ErrorTable"]) -> "ErrorTable":
        """The element-wise mean of several tables (a normaliser measured over seeds)."""
        common = set.intersection(*(set(t.by_corruption) for t in tables))
        n = len(tables)
        return cls(sum(t.clean for t in tables) / n,
                   {c: tuple(sum(t.by_corruption[c][i] for t in tables) / n for i in range(len(SEVERITIES)))
                    for c in sorted(common)})


ALEXNET_IMAGENET = ErrorTable(ALEXNET_IMAGENET_CLEAN, ALEXNET_IMAGENET_C)


def corruption_error(model: ErrorTable, reference: ErrorTable, corruption: str) -> float:
    """CE_c in % (100 = as robust as the reference)."""
    return 100.0 * sum(model.by_corruption[corruption]) / sum(reference.by_corruption[corruption])


def relative_corruption_error(model: ErrorTable, reference: ErrorTable, corruption: str) -> float:
    """Relative CE_c in %: the error added by the corruption, over the reference's added error."""
    gained = sum(e - model.clean for e in model.by_corruption[corruption])
    ref_gained = sum(e - reference.clean for e in reference.by_corruption[corruption])
    return 100.0 * gained / ref_gained


def summarize(model: ErrorTable, reference: ErrorTable | None) -> dict[str, float]:
    """Every number the robustness eval reports, in %: clean error, each error by corruption
    and severity, each corruption's mean error, the unnormalised mean error over the mCE
    corruptions, the extra corruptions' mean apart; with a reference, CE_c, relative CE_c,
    mCE and relative mCE over the mCE corruptions measured."""
    out = {"clean_error": 100.0 * model.clean}
    for c, errs in model.by_corruption.items():
        for s, e in zip(SEVERITIES, errs):
            out[f"error/{c}/{s}"] = 100.0 * e
        out[f"error/{c}"] = 100.0 * sum(errs) / len(errs)
    core = [c for c in MCE_CORRUPTIONS if c in model.by_corruption]
    extra = [c for c in EXTRA_CORRUPTIONS if c in model.by_corruption]
    if core:
        out["mean_error"] = sum(out[f"error/{c}"] for c in core) / len(core)
    if extra:
        out["extra_mean_error"] = sum(out[f"error/{c}"] for c in extra) / len(extra)
    if reference is not None and core:
        missing = [c for c in core if c not in reference.by_corruption]
        if missing:
            raise ValueError(f"the reference has no errors for {', '.join(missing)}")
        perfect = [c for c in core if sum(reference.by_corruption[c]) <= 0]
        if perfect:
            raise ValueError(f"the reference makes no error on {', '.join(perfect)}: CE is undefined")
        for c in core:
            out[f"ce/{c}"] = corruption_error(model, reference, c)
        out["mce"] = sum(out[f"ce/{c}"] for c in core) / len(core)
        # Relative CE divides by the error a corruption adds to the reference: undefined where it
        # adds none (a reference at chance everywhere), so left out rather than made up.
        if all(sum(e - reference.clean for e in reference.by_corruption[c]) > 0 for c in core):
            for c in core:
                out[f"relative_ce/{c}"] = relative_corruption_error(model, reference, c)
            out["relative_mce"] = sum(out[f"relative_ce/{c}"] for c in core) / len(core)
    return out

"""The architecture-dependence report (Kolesnikov et al. 2019): does a ranking of methods
hold across architectures and widths?

From one row per finished run (method, backbone, width, seed, score):
- the Kolesnikov-style table: mean ± std over seeds per (architecture, method, width);
- a figure: score against width, one line per architecture, one panel per method;
- Kendall's tau (SciPy) between the method rankings of every pair of architectures, per width;
- the rank reversals: pairs of methods whose order flips between two architectures.
Rendered as one self-contained HTML page (the figure inlined), which the study logs to MLflow
and the leaderboard publishes.
"""
from __future__ import annotations

import base64
import itertools
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

COLUMNS = ["method", "backbone", "width", "seed", "score"]


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """mean, std (sample, over seeds; NaN with one seed) and n per (backbone, method, width)."""
    g = runs.groupby(["backbone", "method", "width"])["score"]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}).reset_index()


def kendall_taus(summ: pd.DataFrame) -> pd.DataFrame:
    """Per width and pair of architectures, Kendall's tau between their method scores (over
    the methods both have). NaN when fewer than two methods or a constant ranking."""
    from scipy.stats import kendalltau

    rows = []
    for width, at_w in summ.groupby("width"):
        pivot = at_w.pivot(index="method", columns="backbone", values="mean")
        for a, b in itertools.combinations(sorted(pivot.columns), 2):
            both = pivot[[a, b]].dropna()
            tau = kendalltau(both[a], both[b]).statistic if len(both) >= 2 else float("nan")
            rows.append({"width": width, "backbone_a": a, "backbone_b": b, "tau": float(tau), "methods": len(both)})
    return pd.DataFrame(rows, columns=["width", "backbone_a", "backbone_b", "tau", "methods"])


def rank_reversals(summ: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """Every (width, method pair, architecture pair) where the two methods' order flips; the
    winner is the better score under the metric's declared direction."""
    sign = 1.0 if higher_is_better else -1.0
    rows = []
    for width, at_w in summ.groupby("width"):
        pivot = at_w.pivot(index="method", columns="backbone", values="mean")
        spread = at_w.pivot(index="method", columns="backbone", values="std")  # NaN with one seed
        for m1, m2 in itertools.combinations(sorted(pivot.index), 2):
            for a, b in itertools.combinations(sorted(pivot.columns), 2):
                d_a = sign * (pivot.at[m1, a] - pivot.at[m2, a])
                d_b = sign * (pivot.at[m1, b] - pivot.at[m2, b])
                if np.isfinite(d_a) and np.isfinite(d_b) and d_a * d_b < 0:
                    rows.append({"width": width, "arch_a": a, "winner_a": m1 if d_a > 0 else m2,
                                 "arch_b": b, "winner_b": m1 if d_b > 0 else m2,
                                 "loser_a": m2 if d_a > 0 else m1, "gap_a": abs(d_a), "gap_b": abs(d_b),
                                 "beyond_seed_spread": _beyond(spread, m1, m2, a, d_a) and _beyond(spread, m1, m2, b, d_b)})
    return pd.DataFrame(rows, columns=["width", "arch_a", "winner_a", "loser_a", "arch_b", "winner_b", "gap_a", "gap_b",
                                       "beyond_seed_spread"])


def _beyond(spread: pd.DataFrame, m1: str, m2: str, arch: str, gap: float) -> bool:
    """The gap exceeds the seed std of both cells it compares; False when a std is unknown
    (one seed): a reversal is only called clear when the seeds say so."""
    stds = [spread.at[m1, arch], spread.at[m2, arch]]
    return bool(all(np.isfinite(stds)) and abs(gap) > max(stds))


def figure(summ: pd.DataFrame, metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted(summ["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        for backbone, rows in summ[summ["method"] == method].groupby("backbone"):
            rows = rows.sort_values("width")
            ax.errorbar(rows["width"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3, label=backbone)
        ax.set_title(method)
        ax.set_xlabel("width (filters factor k)")
        ax.set_xticks(sorted(summ["width"].unique()))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(summ: pd.DataFrame) -> dict:
    methods = sorted(summ["method"].unique())
    widths = sorted(summ["width"].unique())
    header = [(m, w) for m in methods for w in widths]
    rows = []
    for backbone, rows_b in summ.groupby("backbone"):
        cells = []
        for m, w in header:
            hit = rows_b[(rows_b["method"] == m) & (rows_b["width"] == w)]
            if hit.empty:
                cells.append(None)
            else:
                r = hit.iloc[0]
                cells.append({"mean": f"{r['mean']:.1f}", "std": None if pd.isna(r["std"]) else f"{r['std']:.1f}",
                              "n": int(r["n"])})
        rows.append({"backbone": backbone, "cells": cells})
    return {"methods": methods, "widths": widths, "rows": rows}


def write_report(runs: pd.DataFrame, out_dir: Path, *, study_id: str, metric: str, suite: str,
                 commands: list[str] | None = None, higher_is_better: bool = True) -> dict[str, Path]:
    """report.html (self-contained), runs.csv, summary.csv, kendall_tau.csv, rank_reversals.csv
    and figure.png in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = runs[COLUMNS].copy()
    summ = summary(runs)
    taus = kendall_taus(summ)
    flips = rank_reversals(summ, higher_is_better)
    paths = {"runs": out_dir / "runs.csv", "summary": out_dir / "summary.csv", "kendall_tau": out_dir / "kendall_tau.csv",
             "rank_reversals": out_dir / "rank_reversals.csv"}
    runs.to_csv(paths["runs"], index=False)
    summ.to_csv(paths["summary"], index=False)
    taus.to_csv(paths["kendall_tau"], index=False)
    flips.to_csv(paths["rank_reversals"], index=False)
    paths["figure"] = figure(summ, metric, out_dir / "figure.png")
    png = base64.b64encode(paths["figure"].read_bytes()).decode()
    env = jinja2.Environment(loader=jinja2.PackageLoader("leaderboard", "templates"), autoescape=True)
    html = env.get_template("study.html").render(
        study_id=study_id, metric=metric, suite=suite, table=_table(summ), taus=taus.to_dict("records"),
        flips=flips.to_dict("records"), figure_png=png, n_runs=len(runs), commands=commands or [],
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    paths["report"] = out_dir / "report.html"
    paths["report"].write_text(html, encoding="utf-8")
    return paths

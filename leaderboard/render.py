"""Render the leaderboard as one self-contained static HTML page plus a CSV."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jinja2
import pandas as pd

from harness import tags
from harness.metrics import Metric
from leaderboard.aggregate import (
    KEY_COLUMNS,
    Column,
    column_metrics,
    csv_frame,
    leaderboard_table,
    n_column,
    std_column,
)
from leaderboard.query import EXPERIMENT_NAME, eval_runs, study_runs

DECIMALS = 1


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("leaderboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _display_uri(uri: str) -> str:
    # The page is meant to be published; a server uri may embed a password.
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _fmt(value: float) -> str:
    return f"{value:.{DECIMALS}f}"


def _best(values: pd.Series, metric: Metric) -> float:
    """The best displayed value of a column: comparing rounded values keeps ties bold."""
    best = values.max() if metric.higher_is_better else values.min()
    return round(best, DECIMALS)


def ranking_column(columns: dict[str, Column]) -> str | None:
    """The column a section's rows are ranked by: its first headline column (None when it
    shows no headline, e.g. only an eval's secondary metrics have values there)."""
    return next((label for label, column in columns.items() if column.headline), None)


def rank_rows(rows: pd.DataFrame, label: str | None, metric: Metric | None) -> pd.DataFrame:
    """``rows`` best first on ``label`` in the metric's direction; rows without a value
    last; equal values (and everything, without a ranking column) keep their key order."""
    if label is None:
        return rows
    return rows.sort_values(label, ascending=not metric.higher_is_better, na_position="last", kind="stable")


def _header(label: str, column: Column) -> dict:
    metric = column.metric
    better = "higher" if metric.higher_is_better else "lower"
    return {
        "label": label,
        "arrow": "↑" if metric.higher_is_better else "↓",
        "unit": metric.unit,
        "headline": column.headline,
        "title": "; ".join(filter(None, (metric.description, f"{better} is better"))),
    }


def _cell(row: pd.Series, label: str, best: float) -> dict | None:
    mean = row[label]
    if pd.isna(mean):
        return None
    std, n = row[std_column(label)], int(row[n_column(label)])
    return {
        "mean": _fmt(mean),
        "std": None if pd.isna(std) or n < 2 else _fmt(std),
        "n": n,
        "best": math.isclose(round(mean, DECIMALS), best),
    }


def _suite_sections(table: pd.DataFrame) -> list[dict]:
    declared = column_metrics(table)
    sections = []
    for suite, rows in table.groupby("suite", sort=True):
        # Suites are not comparable, so each shows only the columns it has data for,
        # bolds its own best and ranks its rows on its own headline.
        columns = {label: c for label, c in declared.items() if rows[label].notna().any()}
        best = {label: _best(rows[label], c.metric) for label, c in columns.items()}
        ranked_by = ranking_column(columns)
        rows = rank_rows(rows, ranked_by, columns[ranked_by].metric if ranked_by else None)
        body = [
            {
                "key_values": [row[c] for c in KEY_COLUMNS if c != "suite"],
                "cells": [_cell(row, label, best[label]) for label in columns],
                "commands": list(row["commands"]),
                "configs": int(row["configs"]),
            }
            for _, row in rows.iterrows()
        ]
        sections.append(
            {
                "suite": suite,
                "columns": [_header(label, c) for label, c in columns.items()],
                "ranked_by": ranked_by,
                "rows": body,
            }
        )
    return sections


def publish_studies(tracking_uri: str, out_dir: Path) -> list[dict]:
    """Each study's report (an MLflow artifact) as a page of the site: studies/<id>.html."""
    from mlflow.artifacts import download_artifacts

    pages = []
    for run in study_runs(tracking_uri):
        run_tags = run.data.tags
        study_id = run_tags.get(tags.STUDY_ID, run.info.run_id)
        page = {"id": study_id, "href": None, "suite": run_tags.get(tags.SUITE), "grid": run_tags.get(tags.STUDY_GRID),
                "metric": f"{run_tags.get(tags.EVAL)} {run_tags.get(tags.STUDY_METRIC)}"}
        try:
            local = download_artifacts(run_id=run.info.run_id, artifact_path="report.html", tracking_uri=tracking_uri)
        except Exception:  # a study whose artifacts are gone is listed as such, not fatal
            pages.append(page)
            continue
        target = out_dir / "studies" / f"{study_id}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(local).read_bytes())
        pages.append({**page, "href": f"studies/{study_id}.html"})
    return pages


def render_html(table: pd.DataFrame, tracking_uri: str, generated_at: datetime, studies: list[dict] = ()) -> str:
    template = _environment().get_template("index.html")
    return template.render(
        studies=list(studies),
        title="SSL harness leaderboard",
        experiment=EXPERIMENT_NAME,
        tracking_uri=_display_uri(tracking_uri),
        generated_at=generated_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        key_columns=[c for c in KEY_COLUMNS if c != "suite"],
        sections=_suite_sections(table),
    )


def build(tracking_uri: str, out_dir: Path) -> Path:
    """Write the site (``leaderboard.site``) into ``out_dir``; return its index.html."""
    from leaderboard.site import build_site

    return build_site(tracking_uri, Path(out_dir))

"""Render the leaderboard as one self-contained static HTML page plus a CSV."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jinja2
import pandas as pd

from leaderboard.aggregate import (
    KEY_COLUMNS,
    csv_frame,
    leaderboard_table,
    n_column,
    std_column,
    value_labels,
)
from leaderboard.query import EXPERIMENT_NAME, eval_runs

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


def _suite_sections(table: pd.DataFrame) -> list[dict]:
    labels = value_labels(table)
    sections = []
    for suite, rows in table.groupby("suite", sort=True):
        # Suites are not comparable, so each shows only the columns it has data for
        # and bolds its own best; comparing displayed (rounded) values keeps ties bold.
        columns = [label for label in labels if rows[label].notna().any()]
        best = {label: round(rows[label].max(), DECIMALS) for label in columns}
        body = []
        for _, row in rows.iterrows():
            cells = []
            for label in columns:
                mean = row[label]
                if pd.isna(mean):
                    cells.append(None)
                    continue
                std, n = row[std_column(label)], int(row[n_column(label)])
                cells.append(
                    {
                        "mean": _fmt(mean),
                        "std": None if pd.isna(std) or n < 2 else _fmt(std),
                        "n": n,
                        "best": math.isclose(round(mean, DECIMALS), best[label]),
                    }
                )
            body.append(
                {
                    "key_values": [row[c] for c in KEY_COLUMNS if c != "suite"],
                    "cells": cells,
                    "commands": list(row["commands"]),
                    "configs": int(row["configs"]),
                }
            )
        sections.append({"suite": suite, "columns": columns, "rows": body})
    return sections


def publish_studies(tracking_uri: str, out_dir: Path) -> list[dict]:
    """Each study's report (an MLflow artifact) as a page of the site: studies/<id>.html."""
    from mlflow.artifacts import download_artifacts

    from leaderboard.query import study_runs

    pages = []
    for run in study_runs(tracking_uri):
        tags = run.data.tags
        study_id = tags.get("harness.study_id", run.info.run_id)
        try:
            local = download_artifacts(run_id=run.info.run_id, artifact_path="report.html", tracking_uri=tracking_uri)
        except Exception:  # a study whose artifacts are gone is listed as such, not fatal
            pages.append({"id": study_id, "href": None, "suite": tags.get("harness.suite"), "grid": tags.get("harness.study_grid")})
            continue
        target = out_dir / "studies" / f"{study_id}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(local).read_bytes())
        pages.append({"id": study_id, "href": f"studies/{study_id}.html", "suite": tags.get("harness.suite"),
                      "grid": tags.get("harness.study_grid"), "metric": f"{tags.get('harness.eval')} {tags.get('harness.metric')}"})
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
    """Write ``out_dir/index.html`` and ``out_dir/leaderboard.csv``; return the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = leaderboard_table(eval_runs(tracking_uri))

    html_path = out_dir / "index.html"
    studies = publish_studies(tracking_uri, out_dir)
    html_path.write_text(
        render_html(table, tracking_uri, datetime.now(timezone.utc), studies), encoding="utf-8"
    )
    csv_frame(table).to_csv(out_dir / "leaderboard.csv", index=False)
    return html_path

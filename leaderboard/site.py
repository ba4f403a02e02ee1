"""The static leaderboard site: a home page per suite, a page per protocol and per entry,
claimed vs reproduced, figures, and a JSON / CSV export beside the HTML.

Layout of ``out_dir`` (every file name built by ``safe_name``, every write checked to stay
inside ``out_dir``):

- ``index.html``: the default suite's home (headline columns, sortable, filterable);
  ``suite-<suite>.html`` the same for each suite; ``protocol-<suite>-<protocol>.html`` every
  column of one protocol; ``entry-<key>.html`` one entry (suite, method, backbone, width, epochs);
  ``study-<id>.html`` each architecture study, re-rendered from its data;
- ``data/``: ``<page>.csv`` per table, ``entry-<key>.json`` per entry, ``leaderboard.csv``
  (the wide table); ``figures/``: SVGs; ``static/``: the stylesheet and the sorting script.

Nothing on a page loads from outside the site folder.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import pandas as pd

from harness.data.base import DEFAULT_SUITE
from leaderboard import svg
from leaderboard.aggregate import (KEY_COLUMNS, MISSING, Column, column_metrics, counted_runs, csv_frame,
                                   leaderboard_table, n_column, std_column)
from leaderboard.claims import compare, load_claims
from leaderboard.query import EXPERIMENT_NAME, eval_runs, experiment_id, pretrain_runs
from leaderboard.render import DECIMALS, _display_uri, _environment

# A metric family an eval logs as <family>/<row>/<column> (robustness: error/<corruption>/<severity>)
# is drawn as a heat map on the entry page: from the numbers, never from an artifact.
GRID_METRIC = re.compile(r"^(?P<family>[A-Za-z0-9_]+)/(?P<row>[A-Za-z0-9_]+)/(?P<col>[A-Za-z0-9_]+)$")


def safe_name(*parts) -> str:
    """A file-name stem from tag values: letters, digits, '.', '_' and '-' only (no path
    separator, no leading dot), with a hash of the raw values so two keys never collide."""
    raw = "\x1f".join(str(p) for p in parts)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(str(p) for p in parts)).strip(".-")[:80] or "x"
    return f"{readable}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


class SiteWriter:
    """Writes files under ``root`` only: a name that would resolve outside it is refused."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, rel: str) -> Path:
        target = (self.root / rel).resolve()
        if self.root not in target.parents:
            raise ValueError(f"refusing to write {rel!r} outside the site folder {self.root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def text(self, rel: str, content: str) -> Path:
        target = self.path(rel)
        target.write_text(content, encoding="utf-8")
        return target


@dataclass
class Entry:
    key: dict
    slug: str
    runs: list[dict]  # its counted eval runs (identity columns and declared metrics)
    cells: dict = field(default_factory=dict)  # column label -> {mean, std, n}
    configs: int = 1  # distinct configs folded into the entry (seeds of one command are one)

    @property
    def title(self) -> str:
        k = self.key
        return f"{k['method']} · {k['backbone']} ×{k['width']} · {k['epochs']} epochs · {k['suite']}"


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{DECIMALS}f}"


def _home_columns(columns: dict[str, Column]) -> dict[str, Column]:
    """The headline of every (protocol, preset) and the metrics its eval features."""
    return {label: c for label, c in columns.items() if c.headline or getattr(c.metric, "featured", False)}


def _split_label(label: str) -> tuple[str, str, str]:
    protocol, preset, metric = label.split(" · ", 2)
    return protocol, preset, metric


class SiteBuilder:
    def __init__(self, tracking_uri: str, out_dir: Path, generated_at: datetime | None = None):
        self.uri = tracking_uri
        self.out = SiteWriter(out_dir)
        self.env = _environment()
        self.generated_at = (generated_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
        self.claims = load_claims()
        self.mlflow_ui = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None

    # -- data --------------------------------------------------------------------------------------
    def load(self) -> None:
        self.runs = eval_runs(self.uri)
        self.table = leaderboard_table(self.runs)
        self.columns = column_metrics(self.table)
        self.counted = counted_runs(self.runs)
        self.grid_columns = {c: (m["family"], m["row"], m["col"]) for c in self.counted.columns
                             if (m := GRID_METRIC.match(str(c)))}
        self.grid_means = self._grid_means()
        declared = {m.name for d in self.counted.get("_declaration", pd.Series(dtype=object)) for m in d.metrics}
        identity = {"_declaration", "seed", "protocol", "preset", "run_id", "parent_run_id", "git_commit", "git_dirty",
                    "device", "dataset_hash", "slurm_job_id", "versions", "command", "method_family", "baseline"}
        # Plain records, grouped per entry once: pages read them row by row, and a DataFrame
        # row (hundreds of grid metrics wide, string columns in Arrow) costs far more to visit.
        narrow = [c for c in self.counted.columns if c in declared | identity or c in KEY_COLUMNS]
        by_key: dict[tuple, list[dict]] = {}
        for rec in self.counted[narrow].astype(object).to_dict("records"):
            by_key.setdefault(tuple(rec[c] for c in KEY_COLUMNS), []).append(rec)
        self.pretrain = pretrain_runs(self.uri)
        self.experiment = experiment_id(self.uri) if self.mlflow_ui else None
        self.entries: list[Entry] = []
        for _, row in self.table.iterrows():
            key = {c: row[c] for c in KEY_COLUMNS}
            runs = by_key.get(tuple(row[c] for c in KEY_COLUMNS), [])
            cells = {label: {"mean": float(row[label]), "std": None if pd.isna(row[std_column(label)]) else float(row[std_column(label)]),
                             "n": int(row[n_column(label)])}
                     for label in self.columns if pd.notna(row[label])}
            self.entries.append(Entry(key, "entry-" + safe_name(*key.values()), runs, cells, int(row["configs"])))

    # -- pages -------------------------------------------------------------------------------------
    def build(self) -> Path:
        self.load()
        for asset in ("site.css", "site.js"):
            self.out.text(f"static/{asset}", resources.files("leaderboard").joinpath(f"static/{asset}").read_text())
        csv_frame(self.table).to_csv(self.out.path("leaderboard.csv"), index=False)
        suites = sorted({str(e.key["suite"]) for e in self.entries})
        nav = [{"suite": s, "href": f"suite-{safe_name(s)}.html"} for s in suites]
        self.studies = self._studies()
        home = None
        for suite in suites:
            page = self._suite_page(suite, nav)
            if home is None or suite == DEFAULT_SUITE:
                home = page
        for entry in self.entries:
            self._entry_page(entry, nav)
        index = self.out.path("index.html")
        if home is None:
            index.write_text(self._render("suite.html", nav=nav, suite=None, home=True), encoding="utf-8")
        else:
            index.write_text(self._render_suite(home, nav, home=True), encoding="utf-8")
        return index

    def _render(self, template: str, **context) -> str:
        return self.env.get_template(template).render(
            title="SSL harness leaderboard", experiment=EXPERIMENT_NAME, tracking_uri=_display_uri(self.uri),
            generated_at=self.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"), studies=self.studies, **context)

    def _cell(self, entry: Entry, label: str, best: float | None) -> dict | None:
        cell = entry.cells.get(label)
        if cell is None:
            return None
        protocol, preset, metric = _split_label(label)
        claims = [compare(c, cell["mean"], cell["std"], cell["n"]) for c in self.claims
                  if c.matches(entry.key, protocol, preset, metric)]
        return {"mean": _fmt(cell["mean"]), "value": cell["mean"], "n": cell["n"],
                "std": None if cell["std"] is None or cell["n"] < 2 else _fmt(cell["std"]),
                "best": best is not None and math.isclose(round(cell["mean"], DECIMALS), best),
                "claims": [{**c, "claimed": _fmt(c["claimed"]), "difference": f"{c['difference']:+.{DECIMALS}f}"}
                           for c in claims]}

    def _header(self, label: str, column: Column) -> dict:
        protocol, preset, metric = _split_label(label)
        m = column.metric
        better = "higher" if m.higher_is_better else "lower"
        return {"label": label, "protocol": protocol, "preset": preset, "metric": metric, "unit": m.unit,
                "direction": better, "arrow": "↑" if m.higher_is_better else "↓", "headline": column.headline,
                "title": "; ".join(filter(None, (m.description, f"{better} is better")))}

    def _rows(self, entries: list[Entry], columns: dict[str, Column]) -> list[dict]:
        best = {}
        for label, c in columns.items():
            values = [e.cells[label]["mean"] for e in entries if label in e.cells]
            best[label] = round(max(values) if c.metric.higher_is_better else min(values), DECIMALS) if values else None
        rows = []
        for e in entries:
            family = next((str(r["method_family"]) for r in e.runs if _given(r.get("method_family"))), MISSING)
            role = next((str(r["baseline"]) for r in e.runs if _given(r.get("baseline"))), "")
            rows.append({"key": e.key, "href": f"{e.slug}.html", "family": family, "baseline": role, "configs": e.configs,
                         "cells": [self._cell(e, label, best[label]) for label in columns]})
        return rows

    def _suite_page(self, suite: str, nav: list[dict]) -> dict:
        entries = [e for e in self.entries if str(e.key["suite"]) == suite]
        present = {label: c for label, c in self.columns.items() if any(label in e.cells for e in entries)}
        home_columns = _home_columns(present)
        ranked_by = next((label for label, c in home_columns.items() if c.headline), None)
        if ranked_by:
            metric = home_columns[ranked_by].metric
            entries.sort(key=lambda e: (ranked_by not in e.cells,
                                        -e.cells[ranked_by]["mean"] if ranked_by in e.cells and metric.higher_is_better
                                        else e.cells.get(ranked_by, {"mean": 0})["mean"]))
        stem = f"suite-{safe_name(suite)}"
        figures = self._suite_figures(suite, entries, home_columns)
        protocols = sorted({_split_label(label)[0] for label in present})
        protocol_pages = []
        for protocol in protocols:
            cols = {label: c for label, c in present.items() if _split_label(label)[0] == protocol}
            href = f"protocol-{safe_name(suite, protocol)}.html"
            protocol_pages.append({"protocol": protocol, "href": href})
            self._table_csv(entries, cols, href.replace(".html", ".csv"))
            self.out.text(href, self._render("protocol.html", nav=nav, suite=suite, protocol=protocol,
                                             columns=[self._header(label, c) for label, c in cols.items()],
                                             rows=self._rows(entries, cols), csv=f"data/{href.replace('.html', '.csv')}",
                                             back=f"{stem}.html"))
        self._table_csv(entries, home_columns, f"{stem}.csv")
        page = {"suite": suite, "stem": stem, "columns": [self._header(label, c) for label, c in home_columns.items()],
                "rows": self._rows(entries, home_columns), "ranked_by": ranked_by, "figures": figures,
                "protocols": protocol_pages, "backbones": sorted({str(e.key["backbone"]) for e in entries}),
                "csv": f"data/{stem}.csv"}
        page["families"] = sorted({r["family"] for r in page["rows"]})
        self.out.text(f"{stem}.html", self._render_suite(page, nav))
        return page

    def _render_suite(self, page: dict, nav: list[dict], home: bool = False) -> str:
        return self._render("suite.html", nav=nav, suite=page, home=home)

    def _table_csv(self, entries: list[Entry], columns: dict[str, Column], name: str) -> None:
        records = []
        for e in entries:
            rec = {**e.key, "entry": f"{e.slug}.html"}
            for label in columns:
                cell = e.cells.get(label)
                rec[label] = None if cell is None else cell["mean"]
                rec[f"{label} · std"] = None if cell is None else cell["std"]
                rec[f"{label} · n"] = None if cell is None else cell["n"]
            records.append(rec)
        pd.DataFrame(records).to_csv(self.out.path(f"data/{name}"), index=False)

    def _suite_figures(self, suite: str, entries: list[Entry], columns: dict[str, Column]) -> list[dict]:
        """Per headline column, each method's best entry with its seed spread."""
        figures = []
        for label, c in columns.items():
            if not c.headline:
                continue
            best: dict[str, tuple[float, float | None]] = {}
            for e in entries:
                cell = e.cells.get(label)
                if cell is None:
                    continue
                method = str(e.key["method"])
                better = method not in best or (cell["mean"] > best[method][0]) == c.metric.higher_is_better
                if better:
                    best[method] = (cell["mean"], cell["std"])
            if not best:
                continue
            rel = f"figures/{safe_name(suite, label)}.svg"
            self.out.text(rel, svg.bars([(m, v, s) for m, (v, s) in best.items()], label, c.metric.unit,
                                        c.metric.higher_is_better))
            figures.append({"src": rel, "label": label})
        return figures

    # -- entries -----------------------------------------------------------------------------------
    def _entry_page(self, entry: Entry, nav: list[dict]) -> None:
        runs = sorted(entry.runs, key=lambda r: (str(r["protocol"]), str(r["preset"]), _seed_order(r["seed"])))
        seeds = []
        for run in runs:
            decl = run["_declaration"]
            values = {m.name: float(run[m.name]) for m in decl.metrics if _given(run.get(m.name))}
            seeds.append({"seed": run["seed"], "protocol": run["protocol"], "preset": run["preset"],
                          "run_id": run["run_id"], "metrics": values,
                          "link": f"{self.mlflow_ui}/#/experiments/{self.experiment}/runs/{run['run_id']}"
                          if self.mlflow_ui and self.experiment else None})
        parents = [p for p in dict.fromkeys(r["parent_run_id"] for r in runs if _given(r["parent_run_id"]))
                   if p in self.pretrain]
        config, sources = self._config(parents)
        provenance, seen = [], set()
        for run in runs:
            if run["seed"] in seen:
                continue
            seen.add(run["seed"])
            provenance.append({"seed": run["seed"], "git_commit": run["git_commit"], "git_dirty": run["git_dirty"],
                               "device": run["device"], "dataset_hash": run["dataset_hash"],
                               "slurm_job_id": run["slurm_job_id"], "versions": _versions(run["versions"])})
        provenance.sort(key=lambda p: _seed_order(p["seed"]))
        seed_of = {r["parent_run_id"]: r["seed"] for r in runs}
        curves = {f"seed {seed_of[p]}": self.pretrain[p]["loss"] for p in parents if self.pretrain[p]["loss"]}
        figures = []
        if curves:
            rel = f"figures/{entry.slug}-loss.svg"
            self.out.text(rel, svg.loss_curves(curves, "pretraining loss"))
            figures.append({"src": rel, "label": "pretraining loss by step, one line per seed", "kind": "loss"})
        figures += self._grid_figures(entry)
        claims = []
        for label, cell in entry.cells.items():
            protocol, preset, metric = _split_label(label)
            for c in self.claims:
                if c.matches(entry.key, protocol, preset, metric):
                    cmp = compare(c, cell["mean"], cell["std"], cell["n"])
                    claims.append({"label": label, "ours": _fmt(cell["mean"]),
                                   "std": None if cell["std"] is None else _fmt(cell["std"]), "n": cell["n"],
                                   **cmp, "claimed": _fmt(cmp["claimed"]), "difference": f"{cmp['difference']:+.{DECIMALS}f}"})
        commands = list(dict.fromkeys(r["command"] for r in sorted(runs, key=lambda r: _seed_order(r["seed"]))
                                      if _given(r["command"])))
        record = {"key": {k: str(v) for k, v in entry.key.items()}, "results": entry.cells,
                  "seeds": [{k: v for k, v in s.items() if k != "link"} for s in seeds], "config": config,
                  "config_sources": sources, "provenance": provenance, "commands": commands,
                  "claims": [{k: v for k, v in c.items()} for c in claims],
                  "loss": {k: v for k, v in curves.items()}}
        self.out.text(f"data/{entry.slug}.json", json.dumps(record, default=str, sort_keys=True))
        metric_names = sorted({name for s in seeds for name in s["metrics"]})
        self.out.text(f"{entry.slug}.html", self._render(
            "entry.html", nav=nav, entry=entry, title_text=entry.title, seeds=seeds, metric_names=metric_names,
            config=sorted(config.items()), sources=sources, provenance=provenance, figures=figures, claims=claims,
            commands=commands, json_href=f"data/{entry.slug}.json",
            back=f"suite-{safe_name(entry.key['suite'])}.html"))

    def _config(self, parents: list[str]) -> tuple[dict, dict]:
        """The resolved config (the first seed's pretraining run) and each value's source,
        read from its config.yaml artifact when the artifact store is a local folder."""
        if not parents:
            return {}, {}
        run = self.pretrain[parents[0]]
        config = {k: v for k, v in run["params"].items() if k != "seed"}
        sources = {}
        local = _local_artifacts(run.get("artifact_uri") or "")
        if local is not None and Path(local, "config.yaml").is_file():
            import yaml

            try:
                saved = yaml.safe_load(Path(local, "config.yaml").read_text()) or {}
                sources = {k: str(v) for k, v in (saved.get("sources") or {}).items()}
                config = {k: v for k, v in (saved.get("values") or config).items() if k != "seed"}
            except (OSError, yaml.YAMLError):
                pass
        return config, sources

    def _grid_figures(self, entry: Entry) -> list[dict]:
        """Each <family>/<row>/<column> metric family of an eval (mean over seeds) as a heat map."""
        figures = []
        for (protocol, preset), means in self.grid_means.get(tuple(entry.key.values()), {}).items():
            grids: dict[str, dict[str, dict[str, float]]] = {}
            for c, value in means.items():
                family, row, col = self.grid_columns[c]
                grids.setdefault(family, {}).setdefault(row, {})[col] = float(value)
            for family, rows in sorted(grids.items()):
                cols = sorted({col for r in rows.values() for col in r}, key=lambda x: (len(x), x))
                table = {row: [vals.get(col, math.nan) for col in cols] for row, vals in rows.items()}
                rel = f"figures/{entry.slug}-{safe_name(protocol, preset, family)}.svg"
                self.out.text(rel, svg.heat_map(table, f"{protocol} · {preset}: {family}", columns=cols))
                figures.append({"src": rel, "label": f"{protocol} · {preset}: {family} by row and column "
                                                     f"(mean over seeds)", "kind": "grid"})
        return figures

    def _grid_means(self) -> dict:
        """(entry key) -> (protocol, preset) -> {grid column: mean over seeds}, in one grouped pass."""
        if not self.grid_columns or self.counted.empty:
            return {}
        group_keys = [*KEY_COLUMNS, "protocol", "preset"]
        means = self.counted[group_keys + list(self.grid_columns)].groupby(group_keys, sort=False).mean()
        out: dict = {}
        for index, row in zip(means.index, means.to_numpy()):
            present = {c: v for c, v in zip(means.columns, row) if not math.isnan(v)}
            if present:
                out.setdefault(tuple(index[:len(KEY_COLUMNS)]), {})[tuple(index[len(KEY_COLUMNS):])] = present
        return out

    def _artifact(self, run, name: str) -> Path:
        """A run's artifact: read in place from a local artifact store, else downloaded."""
        local = _local_artifacts(getattr(run.info, "artifact_uri", "") or "")
        if local is not None and (local / name).is_file():
            return local / name
        from mlflow.artifacts import download_artifacts

        return Path(download_artifacts(run_id=run.info.run_id, artifact_path=name, tracking_uri=self.uri))

    # -- studies -----------------------------------------------------------------------------------
    def _studies(self) -> list[dict]:
        """Each architecture study re-rendered from its data (runs.csv): the report HTML it
        logged is never copied into the site."""
        from harness import tags
        from leaderboard.query import study_runs
        from leaderboard.study_report import write_report

        pages = []
        for run in study_runs(self.uri):
            t = run.data.tags
            study_id = t.get(tags.STUDY_ID, run.info.run_id)
            page = {"id": study_id, "href": None, "suite": t.get(tags.SUITE), "grid": t.get(tags.STUDY_GRID),
                    "metric": f"{t.get(tags.EVAL)} {t.get(tags.STUDY_METRIC)}"}
            try:
                data = pd.read_csv(self._artifact(run, "runs.csv"))
            except Exception:  # a study whose data is gone is listed as such, not fatal
                pages.append(page)
                continue
            stem = f"study-{safe_name(study_id)}"
            folder = self.out.path(f"studies/{stem}/report.html").parent
            higher = t.get(tags.STUDY_DIRECTION, "higher") != "lower"
            paths = write_report(data, folder, study_id=str(study_id), metric=page["metric"], suite=str(page["suite"]),
                                 higher_is_better=higher)
            pages.append({**page, "href": f"studies/{stem}/{paths['report'].name}"})
        return pages


def _local_artifacts(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    return Path(uri) if uri.startswith("/") else None


def _given(value) -> bool:
    """A value that was logged (not None / NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _seed_order(seed) -> tuple:
    try:
        return (0, float(seed), str(seed))
    except (TypeError, ValueError):
        return (1, 0.0, str(seed))


def _versions(text) -> dict:
    try:
        return json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}


def build_site(tracking_uri: str, out_dir: Path) -> Path:
    """Write the whole site into ``out_dir``; returns its ``index.html``."""
    return SiteBuilder(tracking_uri, Path(out_dir)).build()

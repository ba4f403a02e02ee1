"""Turn tidy eval runs into the leaderboard table (mean ± std over seeds).

Which metrics get a column, which direction is better and which one is the headline come
from each eval's own declarations (an MLflow tag on its runs, see harness.metrics), never
from a list of known metric names or from the evals' code: the leaderboard ranks a plugin
eval's numbers without having it installed.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from harness.metrics import Declaration, Metric
from leaderboard.query import DECLARATION_COLUMN, metric_column

# Width and pretraining epochs are part of a row's identity: a random-init baseline
# (0 epochs) or a wider network must never be averaged into the default entry.
KEY_COLUMNS: tuple[str, ...] = ("suite", "method", "backbone", "width", "epochs")
SEP = " · "
MISSING = "—"
# Runs still in progress, failed or killed may carry partial metrics; they must
# neither show up nor supersede an older complete evaluation.
COUNTED_STATUS = "FINISHED"


def cell_label(protocol: str, preset: str, metric: str) -> str:
    return SEP.join((protocol, preset, metric))


def std_column(label: str) -> str:
    return f"{label}{SEP}std"


def n_column(label: str) -> str:
    return f"{label}{SEP}n"


def value_labels(table: pd.DataFrame) -> list[str]:
    """Labels of the mean columns, in table order; each has a std and an n column."""
    columns = set(table.columns)
    return [c for c in table.columns if std_column(c) in columns and n_column(c) in columns]


def _seed_order(seed: object) -> tuple[int, float, str]:
    text = str(seed)
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _latest_per_evaluation(runs: pd.DataFrame) -> pd.DataFrame:
    # Without a config hash a run can only be matched to its own pretraining run
    # (parent); matching on NA would merge unrelated configurations.
    identity = runs["config_hash"].fillna(runs["parent_run_id"]).fillna(runs["run_id"])
    keyed = runs.assign(_identity=identity)
    keyed = keyed.sort_values(["start_time", "run_id"], kind="stable")
    keyed = keyed.drop_duplicates(subset=["_identity", "seed", "protocol", "preset"], keep="last")
    return keyed.drop(columns="_identity")


class Column(NamedTuple):
    """What a value column of the table measures: its declared metric (direction, unit)
    and whether that metric is its eval's headline."""

    metric: Metric
    headline: bool


# Where leaderboard_table keeps each value column's Column (see column_metrics).
_COLUMNS_ATTR = "leaderboard.columns"


def column_metrics(table: pd.DataFrame) -> dict[str, Column]:
    """``{label: Column(metric, headline)}`` for the value columns of a table made by
    leaderboard_table, in table order."""
    columns = table.attrs.get(_COLUMNS_ATTR)
    if columns is None:
        # Guessing a direction would bold and rank the wrong end of a lower-is-better column.
        if value_labels(table):
            raise ValueError("table carries no metric declarations: build it with leaderboard_table")
        return {}
    return dict(columns)


def _empty_table() -> pd.DataFrame:
    table = pd.DataFrame(
        {c: pd.Series(dtype=object) for c in (*KEY_COLUMNS, "configs", "commands")}
    )
    table.attrs[_COLUMNS_ATTR] = {}
    return table


def _declared_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that carry a readable metric declaration, with it parsed in ``_declaration``.

    Runs without one (results from before evals declared their metrics, or a malformed
    tag) are not ranked: without a declaration nothing says which of their numbers is the
    result or which direction is better, and guessing would rank some of them backwards.
    """
    texts = runs[DECLARATION_COLUMN] if DECLARATION_COLUMN in runs.columns else pd.Series(None, index=runs.index)
    parsed: dict[str, Declaration | None] = {}  # thousands of runs share a handful of declarations

    def parse(text):
        if not isinstance(text, str):
            return None
        if text not in parsed:
            parsed[text] = Declaration.from_json(text)
        return parsed[text]

    declarations = texts.map(parse)
    return runs.assign(_declaration=declarations)[declarations.notna()]


def _headline_first(declaration: Declaration) -> list[Metric]:
    return [declaration.headline_metric] + [m for m in declaration.metrics if m.name != declaration.headline]


def _declared_columns(runs: pd.DataFrame) -> dict[str, Column]:
    """Per (protocol, preset), in sorted order: the metrics declared by its newest run,
    headline first, then in declaration order. The newest decides because an eval's
    declaration may change between versions (a metric added, a headline changed) and the
    table shows the eval as it is now."""
    newest = (
        runs.sort_values(["start_time", "run_id"], kind="stable")
        .groupby(["protocol", "preset"], sort=True)["_declaration"]
        .last()
    )
    columns = {}
    for (protocol, preset), declaration in newest.items():
        for metric in _headline_first(declaration):
            columns[cell_label(protocol, preset, metric.name)] = Column(metric, metric.name == declaration.headline)
    return columns


def _long_values(runs: pd.DataFrame, declared: dict[str, Column]) -> pd.DataFrame:
    """One row per (run, declared metric it logged): the key, protocol, preset, seed,
    ``label`` and ``value``. A metric logged but not declared by its eval is dropped."""
    names = {metric_column(c.metric.name): c.metric.name for c in declared.values()}
    long = runs.melt(
        id_vars=[*KEY_COLUMNS, "protocol", "preset", "seed"],
        value_vars=[column for column in names if column in runs.columns],
        var_name="metric",
        value_name="value",
    ).dropna(subset=["value"])
    long["label"] = [
        cell_label(p, s, names[m]) for p, s, m in zip(long["protocol"], long["preset"], long["metric"])
    ]
    return long[long["label"].isin(declared)]


def counted_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The eval runs the leaderboard counts: finished, with a readable declaration (parsed in
    ``_declaration``), the newest per (config, seed, protocol, preset), key columns filled."""
    runs = df.copy()
    if runs.empty:
        return runs.assign(_declaration=pd.Series(dtype=object))
    if "status" in runs.columns:
        runs = runs[runs["status"] == COUNTED_STATUS].copy()
    runs = _declared_runs(runs)
    runs["protocol"] = runs["protocol"].fillna(runs["eval"])
    # groupby drops NA keys, which would silently lose runs with a missing tag.
    for column in (*KEY_COLUMNS, "protocol", "preset", "seed"):
        runs[column] = runs[column].astype(object).where(runs[column].notna(), MISSING)
    return _latest_per_evaluation(runs)


def leaderboard_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, method, backbone, width, epochs); per (protocol, preset) and
    metric that eval declares, three columns: ``label`` (mean over seeds), ``label · std``
    (sample std, NaN for a single seed) and ``label · n`` (seeds). ``label`` is
    ``"protocol · preset · metric"``; an eval's columns come headline first, then in its
    declaration order (see column_metrics for each column's metric). ``configs`` counts
    distinct config hashes folded into the row, ``commands`` holds the distinct re-run
    commands ordered by seed.
    """
    runs = counted_runs(df)
    if runs.empty:
        return _empty_table()

    declared = _declared_columns(runs)
    long = _long_values(runs, declared)
    if long.empty:
        return _empty_table()

    cell_keys = [*KEY_COLUMNS, "label"]
    # Average within a seed first so that n counts seeds, not runs, when a row
    # folds several configurations evaluated with the same seed.
    per_seed = long.groupby([*cell_keys, "seed"], sort=False)["value"].mean().reset_index()
    stats = (
        per_seed.groupby(cell_keys, sort=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    # A declared metric no run logged (yet) gets no column.
    labels = [label for label in declared if label in set(stats["label"])]

    wide = stats.pivot(index=list(KEY_COLUMNS), columns="label", values=["mean", "std", "n"])
    table = pd.DataFrame(index=wide.index)
    for label in labels:
        table[label] = wide[("mean", label)].astype(float)
        table[std_column(label)] = wide[("std", label)].astype(float)
        table[n_column(label)] = wide[("n", label)].astype("Int64")

    rows = runs[runs.set_index(list(KEY_COLUMNS)).index.isin(table.index)]
    # One command's seeds share a config id (the hash without the seed); runs from before that
    # tag fall back to their config hash.
    config_ids = (rows["config_id"] if "config_id" in rows.columns else pd.Series(None, index=rows.index)).astype(object)
    rows = rows.assign(_config=config_ids.fillna(rows["config_hash"]))
    by_row = rows.groupby(list(KEY_COLUMNS))
    table["configs"] = by_row["_config"].nunique().astype(int)
    table["commands"] = by_row[["seed", "command"]].apply(_commands_by_seed)

    table = table.reset_index().sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)
    table.attrs[_COLUMNS_ATTR] = {label: declared[label] for label in labels}
    return table


def _commands_by_seed(group: pd.DataFrame) -> tuple[str, ...]:
    pairs = [(s, cmd) for s, cmd in zip(group["seed"], group["command"]) if isinstance(cmd, str)]
    pairs.sort(key=lambda pair: _seed_order(pair[0]))
    return tuple(dict.fromkeys(cmd for _, cmd in pairs))


def csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The table with ``commands`` flattened to one newline-separated cell."""
    out = table.copy()
    out["commands"] = ["\n".join(cmds) for cmds in out["commands"]]
    return out

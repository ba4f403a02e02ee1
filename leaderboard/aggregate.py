"""Turn tidy eval runs into the leaderboard table (mean ± std over seeds)."""

from __future__ import annotations

import pandas as pd

from leaderboard.query import HEADLINE_METRICS

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


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype=object) for c in (*KEY_COLUMNS, "configs", "commands")}
    )


def headline_metrics() -> tuple[str, ...]:
    """top1 and top5, then whatever else an installed evaluator names as its headline (e.g.
    semi_supervised's pct10_top1, where top1 is the 1 % result). A metric shows only in the
    columns of the evals that report it."""
    from harness import registry

    names = list(HEADLINE_METRICS)
    for name in registry.evals.names():
        names += [m for m in registry.evals.get(name).headline if m not in names]
    return tuple(names)


def leaderboard_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, method, backbone, width, epochs); per (protocol, preset, headline metric)
    three columns: ``label`` (mean over seeds), ``label · std`` (sample std, NaN for a
    single seed) and ``label · n`` (seeds). ``label`` is ``"protocol · preset · metric"``.
    ``configs`` counts distinct config hashes folded into the row, ``commands`` holds
    the distinct re-run commands ordered by seed.
    """
    runs = df.copy()
    if runs.empty:
        return _empty_table()
    if "status" in runs.columns:
        runs = runs[runs["status"] == COUNTED_STATUS].copy()
    runs["protocol"] = runs["protocol"].fillna(runs["eval"])
    # groupby drops NA keys, which would silently lose runs with a missing tag.
    for column in (*KEY_COLUMNS, "protocol", "preset", "seed"):
        runs[column] = runs[column].astype(object).where(runs[column].notna(), MISSING)
    runs = _latest_per_evaluation(runs)

    headline = headline_metrics()
    metrics = [m for m in headline if m in runs.columns]
    long = runs.melt(
        id_vars=[*KEY_COLUMNS, "protocol", "preset", "seed"],
        value_vars=metrics,
        var_name="metric",
        value_name="value",
    ).dropna(subset=["value"])
    if long.empty:
        return _empty_table()

    cell_keys = [*KEY_COLUMNS, "protocol", "preset", "metric"]
    # Average within a seed first so that n counts seeds, not runs, when a row
    # folds several configurations evaluated with the same seed.
    per_seed = long.groupby([*cell_keys, "seed"], sort=False)["value"].mean().reset_index()
    stats = (
        per_seed.groupby(cell_keys, sort=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    metric_rank = {m: i for i, m in enumerate(headline)}
    stats["label"] = [
        cell_label(p, s, m) for p, s, m in zip(stats["protocol"], stats["preset"], stats["metric"])
    ]
    label_order = (
        stats[["protocol", "preset", "metric", "label"]]
        .drop_duplicates()
        .assign(_rank=lambda f: f["metric"].map(metric_rank))
        .sort_values(["protocol", "preset", "_rank"])["label"]
        .tolist()
    )

    wide = stats.pivot(index=list(KEY_COLUMNS), columns="label", values=["mean", "std", "n"])
    table = pd.DataFrame(index=wide.index)
    for label in label_order:
        table[label] = wide[("mean", label)].astype(float)
        table[std_column(label)] = wide[("std", label)].astype(float)
        table[n_column(label)] = wide[("n", label)].astype("Int64")

    rows = runs[runs.set_index(list(KEY_COLUMNS)).index.isin(table.index)]
    by_row = rows.groupby(list(KEY_COLUMNS))
    table["configs"] = by_row["config_hash"].nunique().astype(int)
    table["commands"] = by_row[["seed", "command"]].apply(_commands_by_seed)

    return table.reset_index().sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)


def _commands_by_seed(group: pd.DataFrame) -> tuple[str, ...]:
    pairs = [(s, cmd) for s, cmd in zip(group["seed"], group["command"]) if isinstance(cmd, str)]
    pairs.sort(key=lambda pair: _seed_order(pair[0]))
    return tuple(dict.fromkeys(cmd for _, cmd in pairs))


def csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The table with ``commands`` flattened to one newline-separated cell."""
    out = table.copy()
    out["commands"] = ["\n".join(cmds) for cmds in out["commands"]]
    return out

"""Leaderboard end to end against a real (temporary sqlite) MLflow store."""

from __future__ import annotations

import ast
import math
import os
import statistics
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.tracking._tracking_service import utils as tracking_utils

import leaderboard
from harness import tags
from harness.metrics import LOWER, Declaration
from harness.metrics import Metric as Declared
from leaderboard.aggregate import column_metrics, leaderboard_table, n_column, std_column
from leaderboard.query import COLUMNS, eval_runs
from leaderboard.render import build

EXPERIMENT = "ssl-harness"
# What the evals declare (the pipeline tags every eval run with its eval's declaration).
TOP1 = Declaration((Declared("top1", description="top-1 accuracy"), Declared("top5")), "top1")
# semi_supervised: top1 is the 1 % result; its headline is the 10 % one.
SEMI_TOP1 = Declared("top1", description="top-1 accuracy, 1 % labels")
SEMI = Declaration((SEMI_TOP1, Declared("top5"), Declared("pct10_top1")), "pct10_top1")
ERROR = Declaration((Declared("error", LOWER, "%", "corruption error"),), "error")
T0 = 1_700_000_000_000  # ms; explicit start times make "latest" deterministic

LINEAR_MOCO = "linear · moco · top1"
LINEAR_DINO = "linear · dino · top1"
KNN_MOCO = "knn · moco · top1"

ROTATION_SEED_TOP1 = {0: 61.0, 1: 62.5, 2: 64.0}  # linear · moco, after the re-eval
ROTATION_SUPERSEDED_SEED0 = 10.0


def _identity(method, seed, suite="digits", backbone="resnet_small"):
    return {
        "harness.method": method,
        "harness.recipe": "default",
        "harness.backbone": backbone,
        "harness.width": "1",
        "harness.suite": suite,
        "harness.seed": str(seed),
        "harness.config_hash": f"{method}-{suite}-{backbone}",
        "harness.command": f"harness pretrain {method} --suite {suite} --seed {seed}",
        "harness.git_commit": "abc123",
        "harness.epochs": "10",
    }


class Store:
    def __init__(self, uri, artifacts):
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
        self.clock = T0

    def pretrain(self, method, seed, **kw):
        self.clock += 1000
        run = self.client.create_run(
            self.experiment_id,
            start_time=self.clock,
            tags={**_identity(method, seed, **kw), "harness.stage": "pretrain"},
        )
        self.client.log_batch(run.info.run_id, metrics=[Metric("loss", 0.5, self.clock, 0)])
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def evaluate(self, parent, protocol, preset, metrics, start_time=None, status="FINISHED", declaration=TOP1):
        self.clock += 1000
        parent_tags = self.client.get_run(parent).data.tags
        run_tags = {k: v for k, v in parent_tags.items() if k.startswith("harness.")}
        run_tags.update(
            {
                "harness.stage": "eval",
                "harness.eval": protocol,
                "harness.protocol": protocol,
                "harness.preset": preset,
                "mlflow.parentRunId": parent,
            }
        )
        if declaration is not None:  # None: a run from before evals declared their metrics
            run_tags[tags.METRICS] = declaration.to_json()
        start = start_time if start_time is not None else self.clock
        run = self.client.create_run(self.experiment_id, start_time=start, tags=run_tags)
        self.client.log_batch(
            run.info.run_id, metrics=[Metric(k, v, start, 0) for k, v in metrics.items()]
        )
        self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id


@pytest.fixture(autouse=True)
def _isolate_mlflow_global(monkeypatch):
    # Each test starts with no global tracking uri and gets back what it found.
    saved = tracking_utils._tracking_uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking_utils._tracking_uri = None
    yield
    tracking_utils._tracking_uri = saved


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    store = Store(uri, str(root / "artifacts"))

    for seed, top1 in ROTATION_SEED_TOP1.items():
        parent = store.pretrain("rotation", seed)
        if seed == 0:
            superseded = {"top1": ROTATION_SUPERSEDED_SEED0, "top5": 20.0}
            store.evaluate(parent, "linear", "moco", superseded)
        store.evaluate(parent, "linear", "moco", {"top1": top1, "top5": top1 + 20})
        store.evaluate(parent, "linear", "dino", {"top1": top1 - 5, "top5": top1 + 15})
        store.evaluate(parent, "knn", "moco", {"top1": top1 - 10, "k10_top1": 1.0})
        if seed == 0:
            # Logged after the re-eval but started before it: start time decides.
            store.evaluate(parent, "linear", "moco", {"top1": 5.0}, start_time=T0)
            # A crashed newer attempt must not replace the finished one.
            store.evaluate(parent, "linear", "moco", {"top1": 1.0}, status="FAILED")

    cpc = store.pretrain("cpc_v2", 0)
    store.evaluate(cpc, "linear", "moco", {"top1": 70.0, "top5": 90.0})
    store.evaluate(cpc, "semi_supervised", "simclr_v2",
                   {"top1": 30.0, "top5": 60.0, "pct1_top1": 30.0, "pct10_top1": 55.0, "pct10_top5": 80.0},
                   declaration=SEMI)
    # Results from before declarations: a protocol only they ran, and a method only they have.
    store.evaluate(cpc, "legacy", "old", {"top1": 99.0, "top5": 99.5}, declaration=None)
    store.evaluate(store.pretrain("jigsaw", 0), "linear", "moco", {"top1": 99.0, "top5": 99.5}, declaration=None)

    other = store.pretrain("rotation", 0, suite="imagenet", backbone="resnet50")
    store.evaluate(other, "linear", "moco", {"top1": 40.0, "top5": 65.0})
    return uri


@pytest.fixture(scope="module")
def table(store_uri):
    return leaderboard_table(eval_runs(store_uri)).set_index(["suite", "method", "backbone"])


def test_eval_runs_is_tidy_and_only_evals(store_uri):
    runs = eval_runs(store_uri)
    identity, bookkeeping = COLUMNS[:9], COLUMNS[9:]
    assert list(runs.columns[: len(identity)]) == identity
    assert list(runs.columns[-len(bookkeeping):]) == bookkeeping
    metrics = list(runs.columns[len(identity): -len(bookkeeping)])
    assert metrics == sorted(metrics) and {"top1", "top5", "k10_top1", "pct10_top1"} <= set(metrics)
    assert "loss" not in runs.columns  # pretrain parents are not eval runs
    assert len(runs) == 3 * 3 + 3 + 2 + 1 + 2  # 3 seeds × 3 evals, 3 re-evals, cpc (2 evals), imagenet, 2 legacy
    assert set(runs["method"]) == {"rotation", "cpc_v2", "jigsaw"}


def test_eval_runs_carry_the_raw_declaration(store_uri):
    runs = eval_runs(store_uri)
    declarations = runs.set_index("protocol")["metrics_declaration"]
    assert declarations["semi_supervised"] == SEMI.to_json()
    assert set(declarations["linear"].dropna()) == {TOP1.to_json()}
    assert declarations["legacy"] is None  # a run from before declarations


def test_no_metric_is_assumed(tmp_path):
    assert not {"top1", "top5"} & set(COLUMNS)
    missing = eval_runs(f"sqlite:///{tmp_path}/absent.db")
    assert list(missing.columns) == COLUMNS and "metrics_declaration" in COLUMNS


def test_seeds_are_averaged(table):
    row = table.loc[("digits", "rotation", "resnet_small")]
    values = list(ROTATION_SEED_TOP1.values())
    assert row[LINEAR_MOCO] == pytest.approx(statistics.mean(values))
    assert row[std_column(LINEAR_MOCO)] == pytest.approx(statistics.stdev(values))
    assert row[n_column(LINEAR_MOCO)] == 3
    single = table.loc[("digits", "cpc_v2", "resnet_small")]
    assert single[LINEAR_MOCO] == 70.0 and single[n_column(LINEAR_MOCO)] == 1
    assert math.isnan(single[std_column(LINEAR_MOCO)])


def test_protocol_preset_pairs_are_separate_columns(table):
    row = table.loc[("digits", "rotation", "resnet_small")]
    values = list(ROTATION_SEED_TOP1.values())
    assert row[LINEAR_DINO] == pytest.approx(statistics.mean(values) - 5)
    assert row[KNN_MOCO] == pytest.approx(statistics.mean(values) - 10)
    assert "knn · moco · top5" not in table.columns  # never logged
    assert not any("k10_top1" in c for c in table.columns)  # logged, but knn does not declare it
    assert math.isnan(table.loc[("digits", "cpc_v2", "resnet_small")][LINEAR_DINO])


def test_an_evals_declared_metrics_are_its_columns_headline_first(table):
    cpc = table.loc[("digits", "cpc_v2", "resnet_small")]
    # semi_supervised declares pct10_top1 its headline: the 10 % result is not lost behind top1 (1 %).
    assert cpc["semi_supervised · simclr_v2 · pct10_top1"] == 55.0
    assert cpc["semi_supervised · simclr_v2 · top1"] == 30.0
    assert not any("pct10_top5" in c or "pct1_top1" in c for c in table.columns)  # logged, not declared
    assert not any(c.startswith("linear") and "pct10" in c for c in table.columns)
    semi = [label for label in column_metrics(table) if label.startswith("semi_supervised")]
    assert semi == ["semi_supervised · simclr_v2 · pct10_top1", "semi_supervised · simclr_v2 · top1",
                    "semi_supervised · simclr_v2 · top5"]
    assert column_metrics(table)["semi_supervised · simclr_v2 · pct10_top1"].headline
    assert not column_metrics(table)["semi_supervised · simclr_v2 · top1"].headline
    assert column_metrics(table)["semi_supervised · simclr_v2 · top1"].metric == SEMI_TOP1


def test_a_run_without_declaration_contributes_no_column(table):
    assert not any(c.startswith("legacy") for c in table.columns)
    assert ("digits", "jigsaw", "resnet_small") not in table.index  # its only result is undeclared
    assert not any(label.startswith("legacy") for label in column_metrics(table))


def test_reevaluation_replaces_older_run(store_uri):
    runs = eval_runs(store_uri)
    assert (runs["top1"] == ROTATION_SUPERSEDED_SEED0).any()  # still in the store
    table = leaderboard_table(runs).set_index(["suite", "method", "backbone"])
    row = table.loc[("digits", "rotation", "resnet_small")]
    assert row[n_column(LINEAR_MOCO)] == 3
    assert row["linear · moco · top5"] == pytest.approx(statistics.mean([81.0, 82.5, 84.0]))


def test_html_shows_rows_numbers_and_commands(store_uri, tmp_path):
    import re

    page = build(store_uri, tmp_path / "site")
    assert page == tmp_path / "site" / "index.html"
    html = page.read_text(encoding="utf-8")  # no glyphs results: the first suite's home
    assert "Suite: digits" in html
    imagenet = next((tmp_path / "site").glob("suite-imagenet-*.html")).read_text(encoding="utf-8")
    assert "Suite: imagenet" in imagenet and "<strong>40.0</strong>" in imagenet  # best is per suite
    assert ">rotation</a>" in html and ">cpc_v2</a>" in html
    mean = statistics.mean(ROTATION_SEED_TOP1.values())
    std = statistics.stdev(ROTATION_SEED_TOP1.values())
    assert f"{mean:.1f}</strong>" not in html  # cpc_v2's 70.0 is the best there
    assert f">{mean:.1f} <span" in html and f"± {std:.1f}" in html and "n=3" in html
    assert "<strong>70.0</strong>" in html
    # The home page shows headlines; every column of a protocol lives on its page.
    assert '<span class="protocol">linear</span><span class="preset">moco</span><span class="name">top1 (%) ' \
           '<span class="arrow">↑</span>' in html
    linear = next((tmp_path / "site").glob("protocol-digits-linear-*.html")).read_text(encoding="utf-8")
    assert ">top5 (%) " in linear
    # Ranked on the first headline column (knn · moco · top1): cpc_v2 has no value there, so
    # it comes last although it sorts first by name.
    assert "ranked by <code>knn · moco · top1</code>" in html
    assert html.index(">rotation</a>") < html.index(">cpc_v2</a>")
    assert ">jigsaw<" not in html and "legacy" not in html  # undeclared results are not ranked
    assert store_uri in html
    # Self-contained: every link and source is a file of the site.
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert "://" not in ref and (tmp_path / "site" / ref.split("#")[0]).exists(), ref
    entry = next((tmp_path / "site").glob("entry-digits-rotation-*.html")).read_text(encoding="utf-8")
    assert "harness pretrain rotation --suite digits --seed 2" in entry
    csv = pd.read_csv(tmp_path / "site" / "leaderboard.csv")
    assert len(csv) == 3 and LINEAR_MOCO in csv.columns


def test_empty_store_renders_empty_state(tmp_path):
    missing = f"sqlite:///{tmp_path}/absent.db"
    runs = eval_runs(missing)
    assert runs.empty and list(runs.columns) == COLUMNS
    assert leaderboard_table(runs).empty and column_metrics(leaderboard_table(runs)) == {}
    html = build(missing, tmp_path / "a").read_text(encoding="utf-8")
    assert 'id="empty-state"' in html and "<table" not in html
    assert not (tmp_path / "absent.db").exists()  # reading must not create a store

    # An experiment holding only a pretraining run has no eval rows either.
    uri = f"sqlite:///{tmp_path}/empty.db"
    Store(uri, str(tmp_path / "artifacts")).pretrain("rotation", 0)
    assert list(eval_runs(uri).columns) == COLUMNS
    html = build(uri, tmp_path / "b").read_text(encoding="utf-8")
    assert 'id="empty-state"' in html
    assert pd.read_csv(tmp_path / "b" / "leaderboard.csv").empty


def test_build_leaves_global_tracking_uri_alone(store_uri, tmp_path, monkeypatch):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")
    before = mlflow.get_tracking_uri()
    build(store_uri, tmp_path / "x")
    assert mlflow.get_tracking_uri() == before

    # Unset global, uri only from the environment: both must survive as they were.
    mlflow.set_tracking_uri(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.invalid:5000")
    build(store_uri, tmp_path / "y")
    assert tracking_utils._tracking_uri is None
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://tracking.invalid:5000"

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    build(store_uri, tmp_path / "z")
    assert tracking_utils._tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ


def _frame(*runs: dict) -> pd.DataFrame:
    """eval_runs-shaped rows built by hand: each run gives method, seed, start (seconds),
    its logged metrics and its declaration (None: none)."""
    rows = []
    for i, run in enumerate(runs):
        rows.append({
            "method": run["method"], "recipe": "default", "backbone": "resnet_small", "width": "1",
            "suite": run.get("suite", "digits"), "seed": str(run.get("seed", 0)), "eval": run["protocol"],
            "protocol": run["protocol"], "preset": run.get("preset", "default"), **run["metrics"],
            "run_id": f"run{i}", "parent_run_id": f"parent{i}",
            "start_time": pd.Timestamp(T0 + 1000 * run.get("start", i), unit="ms", tz="UTC"),
            "status": "FINISHED", "config_hash": f"{run['method']}-hash", "git_commit": "abc123", "epochs": "10",
            "command": f"harness pretrain {run['method']}",
            "metrics_declaration": None if run["declaration"] is None else run["declaration"].to_json(),
        })
    return pd.DataFrame(rows)


def test_the_newest_declaration_of_an_eval_decides_its_columns():
    newer = Declaration((Declared("top1"), Declared("error", LOWER, "%")), "error")
    table = leaderboard_table(_frame(
        {"method": "a", "protocol": "robust", "metrics": {"top1": 70.0, "error": 40.0}, "declaration": TOP1, "start": 1},
        {"method": "b", "protocol": "robust", "metrics": {"top1": 60.0, "error": 30.0}, "declaration": newer, "start": 2},
    ))
    columns = column_metrics(table)
    assert list(columns) == ["robust · default · error", "robust · default · top1"]  # headline first
    assert columns["robust · default · error"].headline and columns["robust · default · error"].metric.direction == LOWER
    # The older run's logged error counts too: the declaration names the columns, not the runs.
    assert table.set_index("method")["robust · default · error"].to_dict() == {"a": 40.0, "b": 30.0}


def test_a_lower_is_better_metric_is_bold_and_ranked_lowest_first(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = Store(uri, str(tmp_path / "artifacts"))
    errors = {"alpha": 30.0, "beta": 10.0, "delta": 20.0, "epsilon": 10.0}
    for method, error in errors.items():
        store.evaluate(store.pretrain(method, 0), "corruption", "mce", {"error": error}, declaration=ERROR)
    # gamma has no corruption result: it ranks last, below every error.
    store.evaluate(store.pretrain("gamma", 0), "linear", "moco", {"top1": 50.0, "top5": 70.0})

    table = leaderboard_table(eval_runs(uri))
    label = "corruption · mce · error"
    assert column_metrics(table)[label].metric.direction == LOWER
    assert table.set_index("method")[label].dropna().to_dict() == errors

    build(uri, tmp_path / "site")
    html = next((tmp_path / "site").glob("protocol-digits-corruption-*.html")).read_text(encoding="utf-8")
    assert '<span class="name">error (%) <span class="arrow">↓</span>' in html
    assert "<strong>10.0</strong>" in html and html.count("<strong>") == 2  # beta and epsilon
    assert "<strong>30.0</strong>" not in html
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    order = sorted(errors.keys() | {"gamma"}, key=lambda m: home.index(f">{m}</a>"))
    # Lowest error first; beta and epsilon tie and keep their key order; no value last.
    assert order == ["beta", "epsilon", "delta", "alpha", "gamma"]
    csv = pd.read_csv(tmp_path / "site" / "leaderboard.csv").set_index("method")
    assert csv[label].dropna().to_dict() == errors


def test_leaderboard_needs_no_eval_or_method_code():
    # The declarations travel with the runs, so the leaderboard reads results of evals that
    # are not installed; importing the registry (or evals/, methods/) would tie it to them.
    for path in sorted(Path(leaderboard.__file__).parent.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        assert "registry" not in source, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for module in modules:
                assert not module.startswith(("harness.registry", "evals", "methods")), (path, module)
    # And no metric is known by name: every column comes from a declaration.
    for name in ("query.py", "aggregate.py", "render.py"):
        source = (Path(leaderboard.__file__).parent / name).read_text(encoding="utf-8")
        assert "top1" not in source and "top5" not in source, name


def test_detection_backends_are_never_mixed_in_one_column():
    from evals.detection import Detection

    decl = Declaration.of(Detection)
    table = leaderboard_table(_frame(
        {"method": "moco_v2", "protocol": "detection transfer", "preset": "voc_c4/torchvision",
         "metrics": {"AP50": 40.0, "AP": 20.0, "AP75": 18.0, "voc07_AP50": 41.0}, "declaration": decl},
        {"method": "moco_v2", "protocol": "detection transfer", "preset": "voc_c4/detectron2", "start": 5,
         "metrics": {"AP50": 50.0, "AP": 25.0, "AP75": 22.0, "voc07_AP50": 51.0}, "declaration": decl},
    ))
    columns = column_metrics(table)
    tv, d2 = "detection transfer · voc_c4/torchvision · AP50", "detection transfer · voc_c4/detectron2 · AP50"
    assert columns[tv].headline and columns[d2].headline and columns[tv].metric.unit == "AP"
    row = table.set_index("method").loc["moco_v2"]
    assert (row[tv], row[d2]) == (40.0, 50.0)  # one row, the two backends side by side, not averaged

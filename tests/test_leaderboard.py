"""Leaderboard end to end against a real (temporary sqlite) MLflow store."""

from __future__ import annotations

import math
import os
import statistics

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.tracking._tracking_service import utils as tracking_utils

from leaderboard.aggregate import leaderboard_table, n_column, std_column
from leaderboard.query import COLUMNS, eval_runs
from leaderboard.render import build

EXPERIMENT = "ssl-harness"
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

    def evaluate(self, parent, protocol, preset, metrics, start_time=None, status="FINISHED"):
        self.clock += 1000
        parent_tags = self.client.get_run(parent).data.tags
        tags = {k: v for k, v in parent_tags.items() if k.startswith("harness.")}
        tags.update(
            {
                "harness.stage": "eval",
                "harness.eval": protocol,
                "harness.protocol": protocol,
                "harness.preset": preset,
                "mlflow.parentRunId": parent,
            }
        )
        start = start_time if start_time is not None else self.clock
        run = self.client.create_run(self.experiment_id, start_time=start, tags=tags)
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
                   {"top1": 30.0, "top5": 60.0, "pct1_top1": 30.0, "pct10_top1": 55.0, "pct10_top5": 80.0})

    other = store.pretrain("rotation", 0, suite="imagenet", backbone="resnet50")
    store.evaluate(other, "linear", "moco", {"top1": 40.0, "top5": 65.0})
    return uri


@pytest.fixture(scope="module")
def table(store_uri):
    return leaderboard_table(eval_runs(store_uri)).set_index(["suite", "method", "backbone"])


def test_eval_runs_is_tidy_and_only_evals(store_uri):
    runs = eval_runs(store_uri)
    assert list(runs.columns[: len(COLUMNS) - 8]) == COLUMNS[: len(COLUMNS) - 8]
    assert set(COLUMNS) <= set(runs.columns)
    assert "k10_top1" in runs.columns
    assert "loss" not in runs.columns  # pretrain parents are not eval runs
    assert len(runs) == 3 * 3 + 3 + 2 + 1  # 3 seeds × 3 evals, 3 re-evals, cpc (2 evals), imagenet
    assert set(runs["method"]) == {"rotation", "cpc_v2"}


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
    assert not any("k10_top1" in c for c in table.columns)  # not a headline metric
    assert math.isnan(table.loc[("digits", "cpc_v2", "resnet_small")][LINEAR_DINO])


def test_an_evaluators_own_headline_metric_gets_a_column(table):
    cpc = table.loc[("digits", "cpc_v2", "resnet_small")]
    # semi_supervised declares pct10_top1 a headline: the 10 % result is not lost behind top1 (1 %).
    assert cpc["semi_supervised · simclr_v2 · pct10_top1"] == 55.0
    assert cpc["semi_supervised · simclr_v2 · top1"] == 30.0
    assert not any("pct10_top5" in c or "pct1_top1" in c for c in table.columns)
    assert not any(c.startswith("linear") and "pct10" in c for c in table.columns)


def test_reevaluation_replaces_older_run(store_uri):
    runs = eval_runs(store_uri)
    assert (runs["top1"] == ROTATION_SUPERSEDED_SEED0).any()  # still in the store
    table = leaderboard_table(runs).set_index(["suite", "method", "backbone"])
    row = table.loc[("digits", "rotation", "resnet_small")]
    assert row[n_column(LINEAR_MOCO)] == 3
    assert row["linear · moco · top5"] == pytest.approx(statistics.mean([81.0, 82.5, 84.0]))


def test_html_shows_rows_numbers_and_commands(store_uri, tmp_path):
    page = build(store_uri, tmp_path / "site")
    assert page == tmp_path / "site" / "index.html"
    html = page.read_text(encoding="utf-8")
    assert "Suite: digits" in html and "Suite: imagenet" in html
    assert ">rotation<" in html and ">cpc_v2<" in html
    mean = statistics.mean(ROTATION_SEED_TOP1.values())
    std = statistics.stdev(ROTATION_SEED_TOP1.values())
    assert f"{mean:.1f}</strong>" not in html  # cpc_v2's 70.0 is the best there
    assert f"{mean:.1f} <span" in html and f"± {std:.1f}" in html and "(n=3)" in html
    assert "<strong>70.0</strong>" in html
    assert "<strong>40.0</strong>" in html  # best is per suite
    assert "harness pretrain rotation --suite digits --seed 2" in html
    assert "<details>" in html
    assert store_uri in html
    assert not any(ref in html for ref in ("src=", "href=", "url(", "@import"))  # self-contained
    csv = pd.read_csv(tmp_path / "site" / "leaderboard.csv")
    assert len(csv) == 3 and LINEAR_MOCO in csv.columns


def test_empty_store_renders_empty_state(tmp_path):
    missing = f"sqlite:///{tmp_path}/absent.db"
    runs = eval_runs(missing)
    assert runs.empty and list(runs.columns) == COLUMNS
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

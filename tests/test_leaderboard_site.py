"""The leaderboard site: pages, claims, exports, safety, and a real headless Chromium."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from harness import tags
from harness.metrics import Declaration
from leaderboard.aggregate import leaderboard_table
from leaderboard.query import _client_rows, _frame, eval_runs
from leaderboard.site import build_site, safe_name

PAYLOAD = '"><img src=x onerror=alert(1)>'
T0 = 1_700_000_000_000


def _declaration(name: str) -> str:
    from harness import registry

    return Declaration.of(registry.evals.get(name)).to_json()


class Store:
    """A store shaped as the harness writes it: pretraining runs (config params, loss history,
    config.yaml artifact) and their eval runs (identity tags, declarations, metrics)."""

    def __init__(self, uri: str, artifacts: Path):
        self.client = MlflowClient(tracking_uri=uri)
        self.exp = self.client.create_experiment(tags.EXPERIMENT, artifact_location=str(artifacts))
        self.clock = T0

    def identity(self, method, seed, suite="glyphs", backbone="resnet_small", width="0.5", epochs="6", **extra):
        return {tags.METHOD: method, tags.BACKBONE: backbone, tags.WIDTH: width, tags.SUITE: suite,
                tags.SEED: str(seed), tags.EPOCHS: epochs, tags.CONFIG_HASH: f"{method}-{suite}-{backbone}-{seed}",
                tags.CONFIG_ID: f"{method}-{suite}-{backbone}", tags.COMMAND: f"harness run --method {method} --seed {seed}",
                tags.GIT_COMMIT: "abc123", tags.GIT_DIRTY: "False", tags.DEVICE: "cpu", tags.DATASET_HASH: "d" * 64,
                tags.VERSIONS: json.dumps({"torch": "2.14.1"}), tags.METHOD_FAMILY: extra.pop("family", "contrastive"),
                tags.BASELINE: extra.pop("baseline", ""), **extra}

    def pretrain(self, identity: dict, loss: list[float], tmp: Path) -> str:
        self.clock += 1000
        run = self.client.create_run(self.exp, start_time=self.clock, tags={**identity, tags.STAGE: tags.STAGE_PRETRAIN})
        rid = run.info.run_id
        values = {"method.name": identity[tags.METHOD], "train.lr": 0.1, "seed": int(identity[tags.SEED])}
        self.client.log_batch(rid, metrics=[Metric(tags.TRAIN_LOSS, v, self.clock, i) for i, v in enumerate(loss)],
                              params=[Param(k, str(v)) for k, v in values.items()])
        cfg = tmp / f"config-{rid}.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump({"values": values, "sources": {"train.lr": "SimCLR paper", "method.name": "command line",
                                                                     "seed": "command line"}}))
        self.client.log_artifact(rid, str(cfg), artifact_path=None)
        # The harness logs it as config.yaml.
        local = Path(self.client.get_run(rid).info.artifact_uri.replace("file://", ""))
        (local / cfg.name).rename(local / "config.yaml")
        self.client.set_terminated(rid, "FINISHED")
        return rid

    def evaluate(self, parent: str, identity: dict, eval_name: str, preset: str, metrics: dict, protocol=None) -> str:
        self.clock += 1000
        run_tags = {**identity, tags.STAGE: tags.STAGE_EVAL, tags.EVAL: eval_name, tags.PROTOCOL: protocol or eval_name,
                    tags.PRESET: preset, tags.METRICS: _declaration(eval_name), tags.PARENT_RUN: parent}
        run = self.client.create_run(self.exp, start_time=self.clock, tags=run_tags)
        self.client.log_batch(run.info.run_id, metrics=[Metric(k, v, self.clock, 0) for k, v in metrics.items()])
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


LINEAR = {"rotation": [60.0, 62.0, 64.0], "simclr": [50.0, 51.0, 52.0], "supervised": [97.0, 98.0, 99.0],
          "random": [12.0, 13.0, 14.0], PAYLOAD: [30.0, 31.0, 32.0]}
ROLES = {"supervised": ("baseline", "ceiling"), "random": ("baseline", "floor")}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("site-store")
    uri = f"sqlite:///{root}/mlflow.db"
    s = Store(uri, root / "artifacts")
    for method, values in LINEAR.items():
        family, role = ROLES.get(method, ("pretext task" if method == "rotation" else "contrastive", ""))
        for seed, top1 in enumerate(values):
            ident = s.identity(method, seed, family=family, baseline=role)
            parent = s.pretrain(ident, [2.0 - 0.1 * i - 0.01 * seed for i in range(12)], root / "tmp")
            s.evaluate(parent, ident, "linear", "moco", {"top1": top1, "top5": min(top1 + 20, 100)})
            s.evaluate(parent, ident, "knn", "dino", {"top1": top1 - 5, "top5": top1})
            grid = {f"error/{c}/{sev}": 100 - top1 + 5 * sev for c in ("fog", "contrast") for sev in range(1, 6)}
            s.evaluate(parent, ident, "robustness", "imagenet_c/moco-probe/alexnet_run",
                       {"mce": 200 - top1, "relative_mce": 150 - top1, "clean_error": 100 - top1,
                        "mean_error": 100 - top1 + 10, "extra_mean_error": 50.0, **grid})
    # A claim in the shipped data: MoCo v2, R50, 200 epochs, ImageNet linear (moco) 67.5.
    for seed, top1 in enumerate([67.0, 67.4]):
        ident = s.identity("moco_v2", seed, suite="imagenet", backbone="resnet50", width="1", epochs="200")
        parent = s.pretrain(ident, [7.0, 6.5, 6.1], root / "tmp")
        s.evaluate(parent, ident, "linear", "moco", {"top1": top1, "top5": 88.0})
    return uri


@pytest.fixture(scope="module")
def site(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "out"
    return build_site(store, out).parent


def _entry_page(site: Path, *key) -> Path:
    return site / f"entry-{safe_name(*key)}.html"


def test_the_sql_reader_agrees_with_mlflows_client(store):
    fast = eval_runs(store).sort_values("run_id").reset_index(drop=True)
    slow = _frame(_client_rows(store)).sort_values("run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
    assert len(fast) == 5 * 3 * 3 + 2


def test_seeds_of_one_command_are_one_config_not_a_mix(store):
    runs = eval_runs(store)
    table = leaderboard_table(runs)
    assert set(table["configs"]) == {1}  # each seed has its own config hash, one config id
    # A genuinely different config folded into an entry is still counted (and flagged on its pages).
    runs.loc[(runs["method"] == "rotation") & (runs["seed"] == "2"), "config_id"] = "another"
    mixed = leaderboard_table(runs).set_index("method")["configs"]
    assert mixed["rotation"] == 2 and mixed["simclr"] == 1


def test_home_page_headlines_baselines_claims_and_exports(site):
    home = (site / "index.html").read_text()  # the default suite (glyphs) is the home page
    assert "Suite: glyphs" in home
    for label in ("linear", "knn", "robustness"):
        assert f'<span class="protocol">{label}</span>' in home
    assert "top5" not in home.split("<tbody>")[0]  # the home page shows headlines only
    assert 'class="tag ceiling">ceiling' in home and 'class="tag floor">floor' in home
    assert PAYLOAD not in home and "&lt;img src=x onerror=alert(1)&gt;" in home  # escaped, shown
    imagenet = next(site.glob("suite-imagenet-*.html")).read_text()
    # MoCo v2's claim beside our mean of 67.0 / 67.4: 67.2 - 67.5 = -0.3, beyond the seed std 0.28.
    assert "paper 67.5" in imagenet and "Δ -0.3" in imagenet and "outside the seed spread" in imagenet
    table = pd.read_csv(next((site / "data").glob("suite-glyphs-*.csv")))
    assert len(table) == 5 and "robustness · imagenet_c/moco-probe/alexnet_run · mce" in table.columns
    entry = json.loads(next((site / "data").glob("entry-glyphs-rotation-*.json")).read_text())
    assert entry["results"]["linear · moco · top1"]["mean"] == pytest.approx(62.0)
    assert len(entry["seeds"]) == 9 and entry["config_sources"]["train.lr"] == "SimCLR paper"
    assert len(entry["loss"]) == 3


def test_entry_page_has_seeds_config_provenance_curve_and_command(site):
    page = _entry_page(site, "glyphs", "rotation", "resnet_small", "0.5", "6")
    html = page.read_text()
    assert "harness run --method rotation --seed 2" in html and 'class="copy"' in html
    assert "SimCLR paper" in html and "abc123" in html and "d" * 64 in html
    assert 'figures/' in html and "-loss.svg" in html
    grid = next(site.glob("figures/entry-glyphs-rotation-*-robustness-*.svg")).read_text()
    assert ">fog<" in grid and ">contrast<" in grid


def test_every_file_stays_inside_the_site_even_for_hostile_tags(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    s = Store(uri, tmp_path / "artifacts")
    for method in ("../../x", "a/../../../y"):
        ident = s.identity(method, 0, suite="../../z", backbone="/etc/passwd")
        s.evaluate(s.pretrain(ident, [1.0], tmp_path / "tmp"), ident, "linear", "moco", {"top1": 1.0, "top5": 2.0})
    study = s.client.create_run(s.exp, tags={tags.STAGE: tags.STAGE_STUDY, tags.STUDY_ID: "../../x", tags.SUITE: "glyphs"})
    runs_csv = tmp_path / "tmp" / "runs.csv"
    pd.DataFrame([{"method": "a", "backbone": "b", "width": 1, "seed": 0, "score": 1.0}]).to_csv(runs_csv, index=False)
    s.client.log_artifact(study.info.run_id, str(runs_csv))
    s.client.set_terminated(study.info.run_id)
    out = tmp_path / "deep" / "er" / "site"
    before = {p for p in tmp_path.rglob("*")}
    build_site(uri, out)
    written = {p for p in tmp_path.rglob("*")} - before
    site = out.resolve()
    # Everything written is the site folder, inside it, or one of the folders above it.
    assert written and all(p.resolve().is_relative_to(site) or site.is_relative_to(p.resolve()) for p in written)
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "deep" / "x.html").exists()
    assert not list(tmp_path.glob("**/x.html"))
    assert any(p.name == "report.html" for p in out.rglob("*"))  # the study, re-rendered inside the site


# -- a real browser ---------------------------------------------------------------------------------

def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (make test installs Debian's `chromium` when run as root with apt-get)")
    sync = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
    return sync, chromium


@pytest.fixture(scope="module")
def page_of(site):
    sync, chromium = _browser()
    with sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        opened = []

        def open_page(rel: str):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            record = {"console": [], "requests": [], "dialogs": [], "errors": []}
            page.on("console", lambda m: record["console"].append((m.type, m.text)))
            page.on("pageerror", lambda e: record["errors"].append(str(e)))
            page.on("request", lambda r: record["requests"].append(r.url))
            page.on("dialog", lambda d: (record["dialogs"].append(d.message), d.dismiss()))
            page.goto((site / rel).as_uri())
            page.wait_for_load_state("load")
            opened.append(page)
            return page, record

        yield open_page
        browser.close()


def test_pages_load_with_no_console_error_and_no_request_outside_the_site(site, page_of):
    root = site.resolve().as_uri()
    entry = _entry_page(site, "glyphs", "rotation", "resnet_small", "0.5", "6").name
    for rel in ("index.html", entry, next(site.glob("protocol-glyphs-robustness-*.html")).name):
        page, record = page_of(rel)
        assert not [c for c in record["console"] if c[0] == "error"] and not record["errors"], (rel, record)
        outside = [u for u in record["requests"] if not u.startswith(root)]
        assert not outside, (rel, outside)
        assert len(record["requests"]) >= 3  # the page, its stylesheet and script (and images)
        # Fits a 1400 px window: no sideways scrolling (a protocol page's wide table scrolls in its box).
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400, rel


def test_clicking_a_header_sorts_rows_in_the_metrics_direction(page_of):
    page, _ = page_of("index.html")

    def methods():
        return page.eval_on_selector_all("table.board tbody tr td:first-child a", "els => els.map(e => e.textContent)")

    def header(protocol):
        return page.locator("table.board th", has=page.locator(f"span.protocol:text-is('{protocol}')"))

    header("linear").click()  # top-1: higher is better, best first
    assert methods()[:2] == ["supervised", "rotation"] and methods()[-1] == "random"
    header("linear").click()  # again: reversed
    assert methods()[0] == "random"
    header("robustness").click()  # mCE: lower is better, best (lowest) first
    assert methods()[0] == "supervised" and methods()[-1] == "random"
    page.select_option("#filter-family", "baseline")
    visible = page.eval_on_selector_all("table.board tbody tr:not([hidden]) td:first-child a", "els => els.map(e => e.textContent)")
    assert sorted(visible) == ["random", "supervised"]


def test_entry_page_shows_its_loss_curve(site, page_of):
    page, _ = page_of(_entry_page(site, "glyphs", "rotation", "resnet_small", "0.5", "6").name)
    loaded = page.eval_on_selector("figure.loss img", "img => img.complete && img.naturalWidth > 0")
    assert loaded


def test_a_script_payload_in_a_tag_runs_nothing(site, page_of):
    page, record = page_of("index.html")
    page.wait_for_timeout(300)
    assert record["dialogs"] == [] and page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert PAYLOAD in page.inner_text("table.board")  # shown as text
    page, record = page_of(_entry_page(site, "glyphs", PAYLOAD, "resnet_small", "0.5", "6").name)
    page.wait_for_timeout(300)
    assert record["dialogs"] == [] and page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0

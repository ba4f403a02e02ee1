"""`harness study arch`: the report's numbers on a grid built by hand, and the whole study
end to end on the embedded suite (tiny budget), published by the leaderboard."""
from __future__ import annotations

import pandas as pd
import pytest
from scipy.stats import kendalltau

from harness.cli import main
from leaderboard.study_report import kendall_taus, rank_reversals, summary, write_report


def _grid() -> pd.DataFrame:
    # Three methods; arch "a" ranks them x > y > z, "b" reverses the order, "c" agrees with "a".
    scores = {"a": {"x": 50, "y": 40, "z": 30}, "b": {"x": 30, "y": 40, "z": 50}, "c": {"x": 45, "y": 44, "z": 20}}
    rows = []
    for arch, by_method in scores.items():
        for method, s in by_method.items():
            for seed, noise in ((1, -0.5), (2, 0.5)):
                rows.append({"method": method, "backbone": arch, "width": 4, "seed": seed, "score": s + noise})
    return pd.DataFrame(rows)


def test_table_tau_and_reversals_on_a_known_grid(tmp_path):
    summ = summary(_grid())
    cell = summ[(summ.backbone == "a") & (summ.method == "x")].iloc[0]
    assert cell["mean"] == 50 and cell["n"] == 2 and abs(cell["std"] - 0.7071) < 1e-3
    taus = kendall_taus(summ).set_index(["backbone_a", "backbone_b"])["tau"]
    assert taus[("a", "b")] == pytest.approx(-1.0)
    assert taus[("a", "c")] == pytest.approx(1.0)
    assert taus[("b", "c")] == pytest.approx(kendalltau([30, 40, 50], [45, 44, 20]).statistic)
    flips = rank_reversals(summ)
    # a vs b: all three pairs flip; b vs c: all three flip; a vs c: none.
    assert len(flips) == 6
    assert not ((flips.arch_a == "a") & (flips.arch_b == "c")).any()
    assert flips.beyond_seed_spread.all()
    one = flips[(flips.arch_a == "a") & (flips.arch_b == "b") & (flips.winner_a == "x") & (flips.loser_a == "z")]
    assert len(one) == 1 and one.iloc[0].winner_b == "z" and one.iloc[0].gap_a == pytest.approx(20)

    one_seed = summary(_grid()[_grid().seed == 1])
    assert not rank_reversals(one_seed).beyond_seed_spread.any()  # one seed: spread unknown, never "clear"

    paths = write_report(_grid(), tmp_path, study_id="s1", metric="linear top1", suite="digits")
    html = paths["report"].read_text()
    assert "50.0" in html and "± 0.7" in html  # the table
    assert "data:image/png;base64," in html  # the figure, inlined
    assert "Kendall" in html and "-1.00" in html
    assert paths["figure"].stat().st_size > 5000


def test_arch_study_end_to_end_and_on_the_leaderboard(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["study", "arch", "--methods", "rotation,simclr", "--backbones", "resnet_small,revnet50",
                 "--widths", "1", "--seeds", "1,2", "--eval", "linear", "--tracking-uri", uri,
                 "data.train_subset=64", "train.batch_size=32", "train.epochs=1", "train.warmup_epochs=0",
                 "eval.linear.epochs=1", "eval.linear.milestones=[]"]) == 0
    out = capsys.readouterr().out
    assert "2 methods x 2 architectures x 1 widths x 2 seeds = 8 runs" in out
    studies = list((tmp_path / "runs" / "studies").iterdir())
    assert len(studies) == 1
    runs = pd.read_csv(studies[0] / "runs.csv")
    assert len(runs) == 8 and set(runs.backbone) == {"resnet_small", "revnet50"} and set(runs.width) == {1.0}
    taus = pd.read_csv(studies[0] / "kendall_tau.csv")
    assert list(taus[["backbone_a", "backbone_b"]].iloc[0]) == ["resnet_small", "revnet50"]
    html = (studies[0] / "report.html").read_text()
    assert "revnet50" in html and "data:image/png;base64," in html and "Kendall" in html

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ssl-harness").experiment_id
    (study,) = client.search_runs([exp], "tags.`harness.stage` = 'study'")
    arts = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"report.html", "figure.png", "kendall_tau.csv", "rank_reversals.csv"} <= arts
    parents = client.search_runs([exp], "tags.`harness.stage` = 'pretrain'")
    assert len(parents) == 8 and {r.data.tags["harness.study_id"] for r in parents} == {study.data.tags["harness.study_id"]}
    # revnet50 at filters factor 1 is a quarter of the standard width.
    assert {r.data.params["backbone.width"] for r in parents} == {"0.25"}

    assert main(["leaderboard", "build", "--tracking-uri", uri, "--output-dir", str(tmp_path / "site")]) == 0
    import re

    study_id = study.data.tags["harness.study_id"]
    index = (tmp_path / "site" / "index.html").read_text()
    (href,) = re.findall(r'href="(studies/[^"]+)">' + re.escape(study_id) + "<", index)
    page = tmp_path / "site" / href  # re-rendered from the study's data, not copied
    assert page.exists() and "Kendall" in page.read_text()


def test_study_needs_one_eval_to_compare(capsys):
    assert main(["study", "arch", "--methods", "rotation", "--backbones", "resnet_small", "--eval", "all"]) == 2
    assert "name the eval whose metric the study compares" in capsys.readouterr().err


def test_a_failed_run_leaves_a_hole_not_a_lost_study(tmp_path, monkeypatch, capsys):
    import harness.launch

    monkeypatch.chdir(tmp_path)
    real = harness.launch.execute
    ran = []

    def execute(req):
        ran.append((req.method, req.backbone))
        if (req.method, req.backbone) == ("simclr", "revnet50"):
            raise RuntimeError("loss is NaN at step 3")
        return real(req)

    monkeypatch.setattr(harness.launch, "execute", execute)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["study", "arch", "--methods", "simclr,rotation", "--backbones", "revnet50,resnet_small",
                 "--widths", "1", "--seeds", "1", "--eval", "linear", "--tracking-uri", uri,
                 "data.train_subset=64", "train.batch_size=32", "train.epochs=1", "train.warmup_epochs=0",
                 "eval.linear.epochs=1", "eval.linear.milestones=[]"])
    captured = capsys.readouterr()
    assert code == 1
    assert len(ran) == 4  # the grid went on after the failure
    assert "run 1/4 failed" in captured.out and "going on with the others" in captured.out
    (err,) = [line for line in captured.err.splitlines() if line.startswith("harness: error:")]  # progress bars aside
    assert "1 of 4 runs of the study" in err and "loss is NaN at step 3" in err
    (study_dir,) = (tmp_path / "runs" / "studies").iterdir()
    runs = pd.read_csv(study_dir / "runs.csv")
    assert len(runs) == 3 and ("simclr", "revnet50") not in set(zip(runs.method, runs.backbone))
    assert "Kendall" in (study_dir / "report.html").read_text()

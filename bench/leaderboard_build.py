"""Time `harness leaderboard build` on a store of 10,000 eval runs (issue 24: at most 10 s).

    python bench/leaderboard_build.py [--entries 400] [--seeds 5] [--out bench/out/lb_store]

The store is an MLflow sqlite store whose schema MLflow creates (one run through its client);
the runs are then bulk-inserted into MLflow's own tables with the tags, params and metrics
the harness writes: 25 methods x 4 backbones x 4 epoch budgets = 400 entries, 5 seeds each,
2,000 pretraining runs (100-step loss curves, 40 config params) and per seed 5 eval runs
(linear, knn, linear_fast, semi_supervised, robustness with its 95 error/<c>/<s> metrics and
per-corruption CEs): 10,000 eval runs. Inserting through the client would take ~40 minutes;
the build reads the store the same way either way. Prints the build's wall time (median of 3).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ["rotation", "jigsaw", "relative_patch", "exemplar", "denoising_ae", "colorization", "context_encoder",
           "split_brain", "mae", "cpc_v1", "cpc_v2", "instdisc", "moco_v1", "moco_v2", "moco_v3", "simclr", "cmc",
           "supcon", "pirl", "byol", "simsiam", "dino", "swav", "barlow_twins", "vicreg"]
BACKBONES = ["resnet50", "resnet_small", "revnet50", "vit_small"]
EPOCHS = [100, 200, 400, 800]
EVALS = [("linear", "moco"), ("knn", "dino"), ("linear_fast", "sweep"), ("semi_supervised", "simclr_v2"),
         ("robustness", "imagenet_c/moco-probe/alexnet")]


def make_store(path: Path, seeds: int, entries: int) -> str:
    from mlflow import MlflowClient

    from harness import registry, tags
    from harness.data.corruptions import ALL_CORRUPTIONS, MCE_CORRUPTIONS
    from harness.metrics import Declaration

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    uri = f"sqlite:///{path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(tags.EXPERIMENT, artifact_location=str(path / "artifacts"))
    client.create_run(exp)  # MLflow makes its schema; the rest is bulk-inserted below
    declarations = {name: Declaration.of(registry.evals.get(name)).to_json() for name, _ in EVALS}
    con = sqlite3.connect(path / "mlflow.db")
    runs, tag_rows, params, latest, history = [], [], [], [], []
    t0 = 1_700_000_000_000
    keys = [(m, b, e) for m in METHODS for b in BACKBONES for e in EPOCHS][:entries]
    for n, (method, backbone, epochs) in enumerate(keys):
        base = 30 + (n * 7) % 50
        for seed in range(seeds):
            identity = {tags.METHOD: method, tags.BACKBONE: backbone, tags.WIDTH: "1", tags.SUITE: "imagenet",
                        tags.SEED: str(seed), tags.EPOCHS: str(epochs), tags.CONFIG_HASH: f"{n}-{seed}",
                        tags.CONFIG_ID: str(n), tags.COMMAND: f"harness run --method {method} --seed {seed}",
                        tags.GIT_COMMIT: "abc123", tags.GIT_DIRTY: "False", tags.DEVICE: "cuda:NVIDIA H100",
                        tags.DATASET_HASH: "d" * 64, tags.VERSIONS: json.dumps({"torch": "2.14.1", "mlflow": "3"}),
                        tags.METHOD_FAMILY: "contrastive", tags.BASELINE: "", tags.RECIPE: "default"}
            parent = uuid.uuid4().hex
            runs.append((parent, "FINISHED", t0 + len(runs), str(path / "artifacts" / parent), exp))
            tag_rows += [(k, v, parent) for k, v in {**identity, tags.STAGE: tags.STAGE_PRETRAIN}.items()]
            params += [(f"cfg.key{i}", str(i), parent) for i in range(40)]
            history += [(tags.TRAIN_LOSS, 5.0 / (1 + s), t0, parent, s) for s in range(100)]
            for eval_name, preset in EVALS:
                rid = uuid.uuid4().hex
                runs.append((rid, "FINISHED", t0 + len(runs), str(path / "artifacts" / rid), exp))
                tag_rows += [(k, v, rid) for k, v in {**identity, tags.STAGE: tags.STAGE_EVAL, tags.EVAL: eval_name,
                                                      tags.PROTOCOL: eval_name, tags.PRESET: preset,
                                                      tags.METRICS: declarations[eval_name],
                                                      tags.PARENT_RUN: parent}.items()]
                value = base + seed * 0.3
                if eval_name == "robustness":
                    metrics = {"mce": 150 - value, "relative_mce": 140 - value, "clean_error": 100 - value,
                               "mean_error": 110 - value, "extra_mean_error": 105 - value}
                    metrics.update({f"error/{c}/{s}": min(99.0, 100 - value + 5 * s) for c in ALL_CORRUPTIONS
                                    for s in range(1, 6)})
                    metrics.update({f"ce/{c}": 150 - value for c in MCE_CORRUPTIONS})
                elif eval_name == "semi_supervised":
                    metrics = {"top1": value / 2, "top5": value, "pct10_top1": value * 0.8}
                else:
                    metrics = {"top1": value, "top5": min(99.0, value + 20)}
                latest += [(k, v, t0, 0, 0, rid) for k, v in metrics.items()]
    con.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                    "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                    "VALUES (?, '', 'LOCAL', '', '', 'bench', ?, ?, NULL, '', 'active', ?, ?)", runs)
    con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tag_rows)
    con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", params)
    con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)",
                    latest)
    con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, 0)", history)
    con.commit()
    n_eval = con.execute("SELECT COUNT(*) FROM tags WHERE key = ? AND value = 'eval'", (tags.STAGE,)).fetchone()[0]
    con.close()
    print(f"store: {n_eval} eval runs, {len(keys) * seeds} pretraining runs, {len(latest)} metric values, "
          f"{len(history)} loss points ({path / 'mlflow.db'})")
    return uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default="bench/out/lb_store")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    uri = make_store(Path(args.out), args.seeds, args.entries)

    from bench._machine import machine_info
    from leaderboard.site import build_site

    walls = []
    for i in range(args.repeats):
        site = Path(args.out) / f"site{i}"
        t = time.time()
        build_site(uri, site)
        walls.append(time.time() - t)
    import subprocess

    t = time.time()
    subprocess.run([str(Path(sys.executable).with_name("harness")), "leaderboard", "build", "--tracking-uri", uri,
                    "--output-dir", str(Path(args.out) / "site_cli")], check=True, capture_output=True)
    cli = time.time() - t
    pages = len(list((Path(args.out) / "site0").glob("*.html")))
    print(f"machine: {machine_info()}")
    print(f"leaderboard build: {statistics.median(walls):.2f} s median of {args.repeats} "
          f"({', '.join(f'{w:.2f}' for w in walls)}), {pages} pages (in process, imports excluded)")
    print(f"`harness leaderboard build` as a command (a fresh process, imports included): {cli:.2f} s")


if __name__ == "__main__":
    main()

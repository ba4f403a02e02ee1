"""Robustness (ImageNet-C protocol) on the embedded suite: clean error, mCE, relative mCE (issue 23's table).

    python bench/robustness.py --seeds 0 --out bench/out/robustness.jsonl
    python bench/robustness.py --table --out bench/results/robustness.jsonl

The suite's AlexNet reference (``supervised`` on ``alexnet``) runs first, so every later run is
normalised by it (the eval picks the lowest-seed reference for the same corrupted images).
Each entry is pretrained at its committed ``glyphs`` profile through the ordinary pipeline,
probed (``linear``, the glyphs profile), then scored by ``robustness`` on the glyphs profile's
corrupted sets (19 corruptions x 5 severities of 20 val images per class). One JSON line per
(method, backbone, seed) with the wall times of pretraining + probe and of the robustness eval
alone; rows already in ``--out`` are skipped, so an interrupted bench continues.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (method, backbone): the AlexNet reference first; None = the method's own backbone.
ENTRIES = [("supervised", "alexnet"), ("supervised", None), ("supcon", None), ("rotation", None), ("simclr", None),
           ("moco_v2", None), ("random", None)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", help="methods to run (default: every entry)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/robustness.jsonl")
    ap.add_argument("--runs", default="bench/out/robustness_runs", help="run folders (kept, reused)")
    ap.add_argument("--table", action="store_true", help="print the RESULTS table of --out and exit")
    args = ap.parse_args()
    if args.table:
        return print_table(Path(args.out))

    import torch

    from bench._machine import machine_info
    from harness import pipeline

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["method"], r["backbone"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    for seed in args.seeds:
        for method, backbone in ENTRIES:
            if args.only and method not in args.only:
                continue
            if (method, backbone or "default", seed) in done:
                continue
            folder = Path(args.runs) / f"{method}-{backbone or 'default'}-s{seed}"
            t0 = time.time()
            req = dict(method=method, suite="glyphs", backbone=backbone, seed=seed, output_dir=str(folder), track=False)
            linear = pipeline.execute(pipeline.RunRequest(evals="linear", **req), log=lambda *_: None)["linear"]
            pretrain_s = time.time() - t0
            t1 = time.time()
            res = pipeline.execute(pipeline.RunRequest(evals="linear,robustness", **req), log=lambda *_: None)["robustness"]
            record = json.loads((folder / "evals" / "robustness" / "robustness.json").read_text())
            row = {"method": method, "backbone": backbone or "default", "seed": seed, "linear_top1": round(linear["top1"], 2),
                   **{k: round(v, 2) for k, v in res.items() if "/" not in k},
                   "normalizer": record["normalizer"]["name"], "probe": record["probe"],
                   "data_hash": record["corrupted_sets"]["content_hash"], "pretrain_and_probe_s": round(pretrain_s, 1),
                   "robustness_s": round(time.time() - t1, 1), "threads": args.threads, "machine": machine_info()}
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")


def print_table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    print("| method | backbone | seed | clean error | mCE | relative mCE | mean error (unnormalised) | extra 4 | "
          "linear top-1 | pretrain + probe | robustness eval |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    fmt = lambda r, k: f"{r[k]:.1f}" if k in r else "—"
    for r in rows:
        print(f"| {r['method']} | {r['backbone']} | {r['seed']} | {fmt(r, 'clean_error')} | {fmt(r, 'mce')} | "
              f"{fmt(r, 'relative_mce')} | {fmt(r, 'mean_error')} | {fmt(r, 'extra_mean_error')} | "
              f"{fmt(r, 'linear_top1')} | {r['pretrain_and_probe_s']:.0f} s | {r['robustness_s']:.0f} s |")
    if rows:
        print(f"\nmachine: {rows[0]['machine']}, {rows[0]['threads']} threads; normaliser: {rows[-1]['normalizer']}")


if __name__ == "__main__":
    main()

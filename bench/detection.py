"""Detection transfer on the embedded suite's scenes, both backends (issue 22's table).

    python bench/detection.py --seeds 0 1 --methods supervised random moco_v2 rotation \
        --out bench/out/detection.jsonl

Each method is pretrained once per seed at its committed `glyphs` profile (``random``: not at
all), then its backbone is fine-tuned as a Faster R-CNN on the 600 training scenes by each
backend and scored on the 200 val scenes (held-out fonts): AP, AP50, AP75 (COCOeval) and VOC07
AP50. The schedule is longer than the demo's 80 iterations (``--iters``). One JSON line per
(method, seed, backend), with wall times; rows already in ``--out`` are skipped, so an
interrupted bench continues.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--methods", nargs="+", default=["supervised", "random", "moco_v2", "rotation"])
    ap.add_argument("--backends", nargs="+", default=["torchvision", "detectron2"])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/detection.jsonl")
    ap.add_argument("--runs", default="bench/out/detection_runs", help="pretraining run folders (kept, reused)")
    ap.add_argument("--table", action="store_true", help="print the RESULTS table of --out and exit")
    args = ap.parse_args()
    if args.table:
        return print_table(Path(args.out))

    import torch

    from harness import pipeline, registry
    from harness.checkpoint import load
    from harness.rundir import RunFolder

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["method"], r["seed"], r["backend"]) for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    schedule = {"eval.detection.max_iter": args.iters, "eval.detection.steps": [int(args.iters * 0.75), int(args.iters * 0.9)],
                "eval.detection.warmup_iters": 20}
    for seed in args.seeds:
        for method in args.methods:
            todo = [b for b in args.backends if (method, seed, b) not in done]
            if not todo:
                continue
            folder = Path(args.runs) / f"{method}-s{seed}"
            t0 = time.time()
            # Pretraining (resumed or skipped when the folder has it) through the ordinary pipeline.
            req = pipeline.RunRequest(method=method, suite="glyphs", evals="knn", seed=seed, output_dir=str(folder),
                                      track=False)
            knn = pipeline.execute(req, log=lambda *_: None)["knn"]["top1"]
            pretrain_s = time.time() - t0
            for backend in todo:
                cfg = pipeline.build_config(pipeline.RunRequest(method=method, suite="glyphs", evals="detection", seed=seed,
                                                                overrides={**schedule, "eval.detection.backend": backend}))[0]
                m = registry.methods.get(method)(cfg)
                run = RunFolder(folder)
                if run.final_weights.exists():
                    m.load_state_dict(load(run.final_weights)["method"])
                suite = registry.suites.get("glyphs")()
                ev = registry.evals.get("detection")(cfg)
                t1 = time.time()
                res = ev.run(m, suite, torch.device("cpu"), folder / f"detection-{backend}-{args.iters}")
                row = {"method": method, "seed": seed, "backend": backend, "iters": args.iters, "knn": knn,
                       **{k: round(v, 2) for k, v in res.items()}, "detection_s": round(time.time() - t1, 1),
                       "pretrain_s": round(pretrain_s, 1), "threads": args.threads,
                       "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"}
                print(json.dumps(row), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


def print_table(path: Path) -> None:
    """Per (method, backend): AP50, AP, AP75 and VOC07 AP50 as the mean over seeds with each
    seed's value, the detection wall time, and whether AP50 beats random init's (same backend)."""
    import statistics
    from collections import defaultdict

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["backend"], r["method"])].append(r)

    def cell(rs, key):
        vals = [r[key] for r in sorted(rs, key=lambda r: r["seed"])]
        return f"{statistics.mean(vals):.1f}" + (f" ({' / '.join(f'{v:.1f}' for v in vals)})" if len(vals) > 1 else "")

    print("| backend | method | seeds | AP50 | AP | AP75 | VOC07 AP50 | kNN (pretrained) | detection wall (slowest) | AP50 above random init |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (backend, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -statistics.mean(r["AP50"] for r in kv[1]))):
        base = groups.get((backend, "random"))
        above = "—" if method == "random" or not base else \
            ("yes" if statistics.mean(r["AP50"] for r in rs) > statistics.mean(r["AP50"] for r in base) else "no")
        print(f"| {backend} | {method} | {len(rs)} | {cell(rs, 'AP50')} | {cell(rs, 'AP')} | {cell(rs, 'AP75')} | "
              f"{cell(rs, 'voc07_AP50')} | {cell(rs, 'knn')} | {max(r['detection_s'] for r in rs):.0f} s | {above} |")


if __name__ == "__main__":
    main()

"""Does each method beat a randomly initialised backbone of the same architecture?

For every method: the suite's default budget vs the same config with 0 pretraining epochs
(the random initialisation, evaluated through the same method's representation), kNN and
linear top-1 on the embedded suite, 3 seeds by default. Prints a Markdown table for
bench/RESULTS.md.

    python bench/beats_random.py [--methods rotation,cpc_v2] [--seeds 0,1,2] [--jobs 2]

With --jobs N, N runs go at once, each with cores/N torch threads (on a 2-core machine two
one-thread runs finish sooner than two two-thread runs in turn: data augmentation is
single-threaded); the table's wall times are then those of runs sharing the machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_info  # noqa: E402
from harness.rundir import RunFolder  # noqa: E402

HARNESS = Path(sys.executable).with_name("harness")


def run(method: str, seed: int, epochs: int | None, cwd: Path, threads: int | None = None) -> tuple[dict, float]:
    out = cwd / f"{method}-s{seed}-e{epochs}"
    cmd = [str(HARNESS), "run", "--method", method, "--seed", str(seed), "--eval", "knn,linear", "--output-dir", str(out)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    cwd = cwd / f"{out.name}-cwd"  # its own mlflow.db: concurrent runs never share a SQLite file
    cwd.mkdir()
    t0 = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return RunFolder(out).results()["results"], time.time() - t0


def fmt(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="rotation,cpc_v2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores/jobs threads)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    acc = {m: {k: {"knn": [], "linear": [], "time": []} for k in ("trained", "random")} for m in methods}
    jobs = [(m, seed, kind, epochs) for m in methods for seed in seeds for kind, epochs in (("trained", None), ("random", 0))]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run, m, seed, epochs, Path(tmp), threads): (m, seed, kind) for m, seed, kind, epochs in jobs}
        for fut, (method, seed, kind) in futures.items():
            res, wall = fut.result()
            a = acc[method][kind]
            a["knn"].append(res["knn"]["top1"])
            a["linear"].append(res["linear"]["top1"])
            a["time"].append(wall)
            print(f"{method} seed {seed} {kind}: knn {res['knn']['top1']:.2f} linear {res['linear']['top1']:.2f} ({wall:.0f} s)", flush=True)
    rows = list(acc.items())
    jobs_note = f", {args.jobs} runs at a time with {threads} thread(s) each" if args.jobs > 1 else ""
    print(f"\nmachine: {machine_info()}{jobs_note}\n")
    print("| method | kNN top-1 (k=20) trained | kNN top-1 random init | linear top-1 trained | linear top-1 random init | wall per trained run |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method, acc in rows:
        t, r = acc["trained"], acc["random"]
        print(f"| {method} | {fmt(t['knn'])} | {fmt(r['knn'])} | {fmt(t['linear'])} | {fmt(r['linear'])} | {statistics.mean(t['time']):.0f} s |")


if __name__ == "__main__":
    main()

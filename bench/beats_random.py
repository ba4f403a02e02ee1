"""Does each method beat a randomly initialised backbone of the same architecture?

For every method: the suite's default budget vs the same config with 0 pretraining epochs
(the random initialisation, evaluated through the same method's representation), kNN and
linear top-1 on the embedded suite, 3 seeds by default. Prints a Markdown table for
bench/RESULTS.md.

    python bench/beats_random.py [--methods rotation,cpc_v2] [--seeds 0,1,2]
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_info  # noqa: E402

HARNESS = Path(sys.executable).with_name("harness")


def run(method: str, seed: int, epochs: int | None, cwd: Path) -> tuple[dict, float]:
    out = cwd / f"{method}-s{seed}-e{epochs}"
    cmd = [str(HARNESS), "run", "--method", method, "--seed", str(seed), "--eval", "knn,linear", "--output-dir", str(out)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())["results"], time.time() - t0


def fmt(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="rotation,cpc_v2")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            acc = {"trained": {"knn": [], "linear": [], "time": []}, "random": {"knn": [], "linear": [], "time": []}}
            for seed in seeds:
                for kind, epochs in (("trained", None), ("random", 0)):
                    res, wall = run(method, seed, epochs, Path(tmp))
                    acc[kind]["knn"].append(res["knn"]["top1"])
                    acc[kind]["linear"].append(res["linear"]["top1"])
                    acc[kind]["time"].append(wall)
                    print(f"{method} seed {seed} {kind}: knn {res['knn']['top1']:.2f} linear {res['linear']['top1']:.2f} ({wall:.0f} s)", flush=True)
            rows.append((method, acc))
    print(f"\nmachine: {machine_info()}\n")
    print("| method | kNN top-1 (k=20) trained | kNN top-1 random init | linear top-1 trained | linear top-1 random init | wall per trained run |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method, acc in rows:
        t, r = acc["trained"], acc["random"]
        print(f"| {method} | {fmt(t['knn'])} | {fmt(r['knn'])} | {fmt(t['linear'])} | {fmt(r['linear'])} | {statistics.mean(t['time']):.0f} s |")


if __name__ == "__main__":
    main()

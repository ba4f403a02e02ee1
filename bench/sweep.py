"""Many small runs of `harness run` in parallel, for tuning a suite profile.

Each line of the plan is ``method key=value ...`` (``#`` starts a comment); every run goes
through the same pipeline as ``harness run --eval knn,linear`` (pretraining, then kNN and
linear top-1) and is appended as one JSON line to --out as soon as it finishes, so a
killed sweep keeps what it measured. Runs are not tracked in MLflow (``RunRequest.track`` is
off): these are tuning numbers, not results. Prints a table sorted by kNN top-1 per method.

    python bench/sweep.py plan.txt --jobs 12 --out bench/out/sweep.jsonl
"""
import argparse
import json
import multiprocessing as mp
import os
import shlex
import signal
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_plan(text: str) -> list[tuple[str, dict]]:
    from harness.config import parse_override

    runs = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            runs.append((words[0], dict(parse_override(w) for w in words[1:])))
    return runs


def one_run(method: str, overrides: dict, root: str, threads: int, suite: str = "glyphs") -> dict:
    import torch

    from harness import pipeline
    from harness.rundir import RunFolder

    torch.set_num_threads(threads)
    label = " ".join([method] + [f"{k}={v}" for k, v in overrides.items()])
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory(dir=root) as out:
            req = pipeline.RunRequest(method=method, suite=suite, evals="knn,linear", output_dir=out, overrides=dict(overrides),
                                      track=False)
            res = pipeline.execute(req, log=lambda *_: None)
            loss = RunFolder(out).results()["pretrain_loss"]
        return {"run": label, "method": method, "overrides": overrides, "knn": res["knn"]["top1"],
                "linear": res["linear"]["top1"], "final_loss": loss[-1] if loss else None, "wall_s": time.time() - t0}
    except BaseException as e:  # one bad config must not end the sweep
        return {"run": label, "method": method, "overrides": overrides, "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc()[-1500:], "wall_s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan", help="file with one run per line: method key=value ...")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", default="bench/out/sweep.jsonl")
    ap.add_argument("--suite", default="glyphs")
    ap.add_argument("--seed", type=int, default=None, help="seed of every run whose line sets none")
    args = ap.parse_args()
    runs = parse_plan(Path(args.plan).read_text())
    if args.seed is not None:
        runs = [(m, {"seed": args.seed, **o}) for m, o in runs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Data generated once, before the workers race to make it.
    from harness.pipeline import RunRequest, build_config

    cfg, _, suite_cls, _ = build_config(RunRequest(method=runs[0][0], suite=args.suite, overrides=dict(runs[0][1])))
    suite_cls(root=cfg["suite.root"], image_size=cfg["data.image_size"]).prepare()
    rows = []
    with tempfile.TemporaryDirectory() as root, \
            ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(one_run, m, o, root, args.threads, args.suite) for m, o in runs]

        def stop(signum, frame):
            # Spawned workers outlive a killed parent; take them down with it.
            for proc in list(pool._processes.values()):
                proc.kill()
            sys.exit(128 + signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for fut in as_completed(futures):
            row = fut.result()
            rows.append(row)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if "error" in row:
                print(f"FAILED {row['run']}: {row['error']}", flush=True)
            else:
                loss = "  n/a" if row["final_loss"] is None else f"{row['final_loss']:.3f}"  # --epochs 0
                print(f"knn {row['knn']:5.1f} linear {row['linear']:5.1f} loss {loss} "
                      f"{row['wall_s']:4.0f} s  {row['run']}", flush=True)
    print("\n| run | kNN top-1 | linear top-1 | wall |\n| --- | --- | --- | --- |")
    for row in sorted((r for r in rows if "error" not in r), key=lambda r: (r["method"], -r["knn"])):
        print(f"| {row['run']} | {row['knn']:.1f} | {row['linear']:.1f} | {row['wall_s']:.0f} s |")


if __name__ == "__main__":
    main()

"""Which layer of a pretext-trained network holds the best representation, and how does it
compare with the same layer of the untrained network? (Kolesnikov et al. 2019, Sec. 4.2.)

For each method: pretrain once at the suite's default budget (through `harness run`, run
directory kept under --out), then kNN top-1 (the suite's kNN preset) at pre_logits and at
every ResNet stage, for the trained weights and for the random initialisation that run
started from. Prints a Markdown table for bench/RESULTS.md. Any other read-out key can be
swept the same way (e.g. MAE's class token against its mean patch token):

    python bench/probe_layers.py --methods colorization,denoising_ae --seed 0
    python bench/probe_layers.py --methods mae --key method.readout --values cls,avgpool
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_info  # noqa: E402

from evals.knn import KNN  # noqa: E402
from harness import checkpoint  # noqa: E402
from harness.rundir import RunFolder  # noqa: E402
from harness.pipeline import RunRequest, build_config  # noqa: E402
from harness.seeding import seed_everything  # noqa: E402
from harness.backbones.readout import PROBE_LAYERS  # noqa: E402

HARNESS = Path(sys.executable).with_name("harness")


def knn_by_layer(method_name: str, seed: int, run_dir: Path, key: str, values: list[str]) -> dict[str, tuple[float, float]]:
    cfg, method_cls, suite_cls, _ = build_config(RunRequest(method=method_name, seed=seed))
    suite = suite_cls(root=cfg["suite.root"], image_size=cfg["data.image_size"])
    seed_everything(seed)  # the same draw `harness run` made for its initial weights
    random_init = method_cls(cfg)
    trained = method_cls(cfg)
    trained.load_state_dict(checkpoint.load(RunFolder(run_dir).final_weights)["method"])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layer in values:
            cfg.values[key] = layer
            row = []
            for model in (trained, random_init):
                seed_everything(seed)
                row.append(KNN(cfg).run(model, suite, torch.device("cpu"), Path(tmp))["top1"])
            out[layer] = tuple(row)
            print(f"{method_name} s{seed} {layer}: trained {row[0]:.2f} random {row[1]:.2f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="rotation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/out/probe_layers")
    ap.add_argument("--key", default="backbone.probe_layer")
    ap.add_argument("--values", default=",".join(PROBE_LAYERS))
    args = ap.parse_args()
    values = args.values.split(",")
    tables = []
    for method in args.methods.split(","):
        run_dir = Path(args.out).resolve() / f"{method}-s{args.seed}"
        t0 = time.time()
        cmd = [str(HARNESS), "run", "--method", method, "--seed", str(args.seed), "--eval", "knn",
               "--output-dir", str(run_dir), "--tracking-uri", f"sqlite:///{run_dir.parent}/mlflow.db"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
        tables.append((method, knn_by_layer(method, args.seed, run_dir, args.key, values), time.time() - t0))
    print(f"\nmachine: {machine_info()}\n")
    print(f"kNN top-1 (k=20), trained vs random init, by {args.key}:\n")
    print("| method | " + " | ".join(values) + " | wall |")
    print("| --- | " + " | ".join("---" for _ in values) + " | --- |")
    for method, rows, wall in tables:
        cells = [f"{rows[v][0]:.1f} vs {rows[v][1]:.1f}" for v in values]
        print(f"| {method} (trained vs random) | " + " | ".join(cells) + f" | {wall:.0f} s |")


if __name__ == "__main__":
    main()

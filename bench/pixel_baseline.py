"""How far do raw pixels get on a suite, under the harness's own kNN protocol?

The random-initialisation floor (`--epochs 0`) is one reference for "did pretraining learn
anything"; the images themselves are another. This reads the suite's train and val splits
as flattened pixels (optionally centred per image, or average-pooled to a coarser grid) and
scores them with `evals.knn` exactly as the kNN eval scores features (cosine, T=0.07,
k=20 unless told). Prints a Markdown table for bench/RESULTS.md.

    python bench/pixel_baseline.py [--suite digits] [--k 20]
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_info  # noqa: E402

from evals.knn import knn_predict, knn_topk_accuracy  # noqa: E402
from harness import registry  # noqa: E402


def pixels(suite, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = suite.split(split, transform=TF.to_tensor)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def centred(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(dim=(1, 2, 3), keepdim=True)).flatten(1)


# name -> images [N, 3, H, W] to vectors [N, D]
VIEWS = {
    "raw pixels": lambda x: x.flatten(1),
    "pixels centred per image": centred,
    "pixels average-pooled to 8x8, centred": lambda x: centred(F.adaptive_avg_pool2d(x, 8)),
    "mean colour per image (3 numbers)": lambda x: x.mean(dim=(2, 3)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="digits")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=0.07)
    args = ap.parse_args()
    suite_cls = registry.suites.get(args.suite)
    suite = suite_cls(image_size=int(suite_cls.profile.get("data.image_size", 224)))
    t0 = time.time()
    (xtr, ytr), (xva, yva) = pixels(suite, "train"), pixels(suite, "val")
    num_classes = int(max(ytr.max(), yva.max())) + 1
    print(f"machine: {machine_info()}")
    print(f"suite {args.suite}: {len(xtr)} train, {len(xva)} val images, {tuple(xtr.shape[1:])}; "
          f"kNN k={args.k}, T={args.temperature}\n")
    print(f"| representation | kNN top-1 (k={args.k}) | kNN top-5 |")
    print("| --- | --- | --- |")
    for name, view in VIEWS.items():
        scores = knn_predict(view(xtr), ytr, view(xva), [args.k], args.temperature, num_classes)[args.k]
        top1, top5 = knn_topk_accuracy(scores, yva)
        print(f"| {name} | {top1:.1f} | {top5:.1f} |")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()

"""Why does a trained network lose to its random initialisation? Four numbers per network.

For a finished run directory (`harness run --method M --output-dir D`) and the random
initialisation that run started from: val kNN top-1 (the suite's kNN, k=20, T=0.07), kNN
leave-one-out on the train split (same photographs as training: low here means the features
group images by something other than their class even where they were trained), val kNN with
BatchNorm in batch-statistics mode (rules running-statistics mismatch in or out), and the
effective rank of the train features (exp of the entropy of the normalised squared singular
values; Roy & Vetterli 2007): a few directions carrying everything is dimensional collapse.
Two more say what the features group by instead, from the suite's MANIFEST.json: leave-one-out
kNN of the background photograph an image was cut from (7 train photographs: high means the
features encode the background), and how often an image's nearest neighbour is the same
written digit on another background (its other copy: high means they encode the stroke).

    python bench/feature_diagnostics.py byol runs/byol-digits-s0
"""
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evals.features import extract  # noqa: E402
from evals.knn import knn_predict, knn_topk_accuracy  # noqa: E402
from harness import checkpoint  # noqa: E402
from harness.rundir import RunFolder  # noqa: E402
from harness.data.transforms import eval_transform  # noqa: E402
from harness.errors import UsageError  # noqa: E402
from harness.pipeline import RunRequest, build_config  # noqa: E402
from harness.seeding import seed_everything  # noqa: E402


def effective_rank(feats: torch.Tensor) -> float:
    s = torch.linalg.svdvals(feats - feats.mean(0))
    p = s ** 2 / (s ** 2).sum()
    return float(torch.exp(-(p * (p + 1e-12).log()).sum()))


def loo_knn(feats: torch.Tensor, labels: torch.Tensor, classes: int, k: int = 20, t: float = 0.07) -> float:
    z = F.normalize(feats, dim=1)
    sim = z @ z.t()
    sim.fill_diagonal_(-2)  # an image is not its own neighbour
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(z), classes).scatter_add_(1, labels[idx], (top / t).exp())
    return 100.0 * (votes.argmax(1) == labels).float().mean().item()


def background_labels(dataset, suite_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Per train image: the index of its background photograph and of its source digit."""
    import json

    files = json.loads((suite_root / "MANIFEST.json").read_text())["files"]
    recs = [files[str(Path(p).relative_to(suite_root))] for p, _ in dataset.samples]
    photos = sorted({r["photo"] for r in recs})
    return (torch.tensor([photos.index(r["photo"]) for r in recs]),
            torch.tensor([r["digit"] for r in recs]))


def other_copy_top1(feats: torch.Tensor, digit: torch.Tensor) -> float:
    z = F.normalize(feats, dim=1)
    sim = z @ z.t()
    sim.fill_diagonal_(-2)
    return 100.0 * (digit[sim.argmax(1)] == digit).float().mean().item()


def main() -> None:
    method_name, run_dir = sys.argv[1], Path(sys.argv[2])
    cfg, method_cls, suite_cls, _ = build_config(RunRequest(method=method_name, seed=0))
    suite = suite_cls(root=cfg["suite.root"], image_size=cfg["data.image_size"])
    seed_everything(int(cfg["seed"]))  # the same draw `harness run` made for its initial weights
    random_init = method_cls(cfg)
    trained = method_cls(cfg)
    trained.load_state_dict(checkpoint.load(RunFolder(run_dir).final_weights)["method"])
    tf = eval_transform(int(cfg["data.image_size"]), cfg["data.eval_resize_ratio"])
    train, val = suite.split("train", tf), suite.split("val", tf)
    cpu, n_cls = torch.device("cpu"), len(train.classes)
    photo, digit = background_labels(train, suite.prepare())
    print("| network | val kNN | train leave-one-out kNN | val kNN, batch-statistics BN | effective rank "
          "| train leave-one-out kNN of the background photo | nearest neighbour is the other copy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, model in (("random init", random_init), ("trained", trained)):
        ftr, ytr = extract(model, train, cpu, 256, "train")
        fva, yva = extract(model, val, cpu, 256, "val")
        knn = knn_topk_accuracy(knn_predict(ftr, ytr, fva, [20], 0.07, n_cls)[20], yva)[0]
        batch_bn = copy.deepcopy(model).train()  # BN normalises with each batch's own statistics
        try:
            with torch.no_grad():
                fb = torch.cat([batch_bn.features(x) for x, _ in torch.utils.data.DataLoader(val, batch_size=256)])
            knn_bn = f"{knn_topk_accuracy(knn_predict(ftr, ytr, fb, [20], 0.07, n_cls)[20], yva)[0]:.1f}"
        except UsageError as e:  # e.g. MoCo's split BN cannot split the last, odd batch
            knn_bn = f"n/a ({e})"
        print(f"| {method_name} {name} | {knn:.1f} | {loo_knn(ftr, ytr, n_cls):.1f} | {knn_bn} | "
              f"{effective_rank(ftr):.1f} of {ftr.shape[1]} | {loo_knn(ftr, photo, int(photo.max()) + 1):.1f} | "
              f"{other_copy_top1(ftr, digit):.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""Figures logged with runs: people would rather look at a curve than read 400 numbers."""
from __future__ import annotations

from pathlib import Path


def loss_curve(history: list[float], path: Path, title: str, steps_per_epoch: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(history) + 1), history, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("pretraining loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if steps_per_epoch:
        for e in range(steps_per_epoch, len(history) + 1, steps_per_epoch):
            ax.axvline(e, color="grey", alpha=0.15, linewidth=0.8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reconstruction_grid(inputs, targets, predictions, path: Path, upscale: int = 4) -> Path:
    """Three rows (input, target, prediction) of [N, 3, H, W] images in [0, 1], as one PNG."""
    import torch
    import torch.nn.functional as F
    from torchvision.utils import save_image

    rows = torch.cat([inputs, targets, predictions]).detach().float().cpu().clamp(0, 1)
    if upscale > 1:  # 32px images are unreadable at 1:1
        rows = F.interpolate(rows, scale_factor=upscale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(rows, path, nrow=inputs.shape[0], padding=2, pad_value=1.0)
    return path


def corruption_errors(errors: dict, path: Path, title: str) -> Path:
    """Top-1 error by corruption (rows) and severity (columns) as a heat map, the clean error
    in the title: where a representation breaks shows at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(errors["by_corruption"])
    table = 100.0 * np.array([errors["by_corruption"][c] for c in names])
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(names) + 1.4))
    im = ax.imshow(table, cmap="magma_r", vmin=0, vmax=100, aspect="auto")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xticks(range(table.shape[1]), [f"severity {s}" for s in range(1, table.shape[1] + 1)], fontsize=8)
    for (i, j), v in np.ndenumerate(table):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v > 55 else "black")
    ax.set_title(f"{title}\nclean error {100.0 * errors['clean']:.1f} %", fontsize=9)
    fig.colorbar(im, ax=ax, label="top-1 error (%)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

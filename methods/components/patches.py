"""Patch-based pretext tasks' shared pieces: grids of tiles with gaps and jitter, per-tile
normalisation, and the colour tricks that stop a network solving the task by chromatic
aberration instead of by understanding the image.

Everything here draws from torch's global generator, which the data loader seeds per
sample (harness.data.loading), so targets are deterministic under the run seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Grid:
    """A 3x3 (or n x n) grid of ``cell``-pixel cells, each holding a ``tile``-pixel tile.

    ``cell - tile`` is the room each tile has to move inside its cell: tiles never touch,
    so low-level continuity across edges cannot solve the task (Noroozi & Favaro 2016,
    Sec. 3.2; Doersch et al. 2015, Sec. 3 "gaps").
    """

    n: int
    cell: int
    tile: int
    # None: a tile may sit anywhere in its cell (Noroozi & Favaro). An int j: the tile sits
    # centred in its cell, moved by at most j pixels each way (Doersch et al.'s fixed gap).
    jitter: int | None = None

    def __post_init__(self):
        if not 0 < self.tile <= self.cell:
            raise ValueError(f"tile {self.tile}px must fit in a cell of {self.cell}px")
        if self.jitter is not None and not 0 <= self.jitter <= (self.cell - self.tile) // 2:
            raise ValueError(f"jitter {self.jitter}px must fit in the {(self.cell - self.tile) // 2}px margin of each side")

    @property
    def size(self) -> int:
        return self.n * self.cell

    def check_fits(self, image_size: int) -> None:
        if self.size > image_size:
            raise ValueError(f"a {self.n}x{self.cell}px grid ({self.size}px) does not fit in data.image_size={image_size}")


def cut_tiles(img: torch.Tensor, grid: Grid, jitter: bool = True) -> torch.Tensor:
    """img [C, S, S] with S >= grid.size -> tiles [n*n, C, tile, tile], row-major.

    With ``jitter`` each tile's position inside its cell is drawn uniformly; without, tiles
    are centred (evaluation-time geometry and tests).
    """
    c = img.shape[0]
    room = grid.cell - grid.tile
    lo, hi = (0, room) if grid.jitter is None else (room // 2 - grid.jitter, room // 2 + grid.jitter)
    tiles = torch.empty(grid.n * grid.n, c, grid.tile, grid.tile, dtype=img.dtype)
    for r in range(grid.n):
        for q in range(grid.n):
            dy, dx = (torch.randint(lo, hi + 1, (2,)).tolist() if jitter and hi > lo else (room // 2, room // 2))
            y, x = r * grid.cell + dy, q * grid.cell + dx
            tiles[r * grid.n + q] = img[:, y:y + grid.tile, x:x + grid.tile]
    return tiles


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each tile to zero mean and unit std on its own (Noroozi & Favaro 2016, Sec. 3.2), so
    tiles cannot be matched by their brightness or contrast."""
    dims = tuple(range(1, tiles.ndim))
    mean = tiles.mean(dim=dims, keepdim=True)
    std = tiles.std(dim=dims, keepdim=True)
    return (tiles - mean) / (std + eps)


def channel_jitter(tiles: torch.Tensor, max_shift: int = 1) -> torch.Tensor:
    """Shift each colour channel of each tile by up to ``max_shift`` pixels, independently:
    the aberration cue that locates a tile in the lens field becomes noise (Noroozi & Favaro
    2016, Sec. 3.2)."""
    if max_shift <= 0:
        return tiles
    out = tiles.clone()
    for i in range(tiles.shape[0]):
        for ch in range(tiles.shape[1]):
            dy, dx = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
            out[i, ch] = torch.roll(tiles[i, ch], shifts=(dy, dx), dims=(0, 1))
    return out


def drop_channels(tiles: torch.Tensor, noise_std: float = 0.01) -> torch.Tensor:
    """Keep one random colour channel per tile and replace the other two with Gaussian
    noise (Doersch et al. 2015, Sec. 4 "color dropping")."""
    n, c = tiles.shape[:2]
    keep = torch.randint(0, c, (n,))
    mask = torch.zeros(n, c, 1, 1, dtype=torch.bool)
    mask[torch.arange(n), keep] = True
    noise = torch.randn_like(tiles) * noise_std
    return torch.where(mask, tiles, noise)


def random_grayscale(tiles: torch.Tensor, p: float) -> torch.Tensor:
    """With probability ``p`` per tile, replace colour by luminance (Noroozi & Favaro 2016
    train 30% of tiles in grey)."""
    grey = (0.299 * tiles[:, 0] + 0.587 * tiles[:, 1] + 0.114 * tiles[:, 2]).unsqueeze(1).expand_as(tiles)
    pick = (torch.rand(tiles.shape[0]) < p).view(-1, 1, 1, 1)
    return torch.where(pick, grey, tiles)


def grid_tile_features(backbone, x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The representation of a tile-trained network: x [B, C, S, S] (S >= grid.size) ->
    the mean of the backbone's embeddings of the n*n centred, per-tile normalised tiles
    [B, D]. The network is read the way it was trained, on tiles, not on whole images."""
    b, _, s, _ = x.shape
    top = (s - grid.size) // 2
    off = (grid.cell - grid.tile) // 2
    tiles = torch.stack([
        x[:, :, top + r * grid.cell + off: top + r * grid.cell + off + grid.tile,
          top + q * grid.cell + off: top + q * grid.cell + off + grid.tile]
        for r in range(grid.n) for q in range(grid.n)
    ], dim=1)  # [B, n*n, C, t, t]
    z = backbone(normalize_tiles(tiles.flatten(0, 1)))
    return z.view(b, grid.n * grid.n, -1).mean(dim=1)

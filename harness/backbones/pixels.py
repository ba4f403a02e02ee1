"""``pixels``: the identity "backbone", the image itself as the representation. The floor of
every table: a suite on which raw pixels beat a method cannot tell methods apart."""
from __future__ import annotations

import torch
from torch import nn


class Pixels(nn.Module):
    """[B, 3, H, W] -> [B, 3 * H * W]; nothing to train."""

    def __init__(self, img_size: int = 224):
        super().__init__()
        self.num_features = 3 * img_size * img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        return x


def pixels(img_size: int = 224) -> Pixels:
    return Pixels(img_size)


pixels.description = "the normalised image's pixels (identity, no parameters): the floor of a table"

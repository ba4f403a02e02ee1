"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?", TMLR 2023), as a harness backbone.

    x = BN(GELU(Conv(patch, stride=patch)(x)))                        # patch embedding
    repeat depth: x = x + BN(GELU(DepthwiseConv(kernel)(x)))          # spatial mixing
                  x = BN(GELU(PointwiseConv(x)))                      # channel mixing
    features = mean over positions

A backbone plugin: the factory registers through the ``harness.backbones`` entry point; the
harness passes ``width`` and, for inputs of 64 px or less, ``small_input``.
"""
from __future__ import annotations

from torch import nn

PAPER = "Trockman & Kolter 2023, ConvMixer-256/8 (CIFAR-10 setting: patch 2, kernel 5)"


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x + self.fn(x)


class ConvMixer(nn.Module):
    def __init__(self, dim: int = 256, depth: int = 8, kernel: int = 9, patch: int = 7):
        super().__init__()
        block = lambda *layers: nn.Sequential(*layers, nn.GELU(), nn.BatchNorm2d(dim))  # noqa: E731
        self.stem = block(nn.Conv2d(3, dim, patch, stride=patch))
        self.mixer = nn.Sequential(*[nn.Sequential(Residual(block(nn.Conv2d(dim, dim, kernel, groups=dim, padding="same"))),
                                                   block(nn.Conv2d(dim, dim, 1))) for _ in range(depth)])
        self.num_features = dim

    def forward_maps(self, x):
        return self.mixer(self.stem(x))

    def forward(self, x):
        return self.forward_maps(x).mean(dim=(2, 3))


def convmixer(width: float = 1.0, depth: int = 8, small_input: bool = False) -> ConvMixer:
    """ConvMixer-256/8 scaled by ``width``; small inputs (CIFAR-sized) use patch 2 and kernel 5."""
    return ConvMixer(dim=max(16, int(256 * width)), depth=depth, kernel=5 if small_input else 9,
                     patch=2 if small_input else 7)


convmixer.description = f"ConvMixer-256/8 ({PAPER}); width scales the 256 channels"

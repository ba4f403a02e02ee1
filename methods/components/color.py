"""CIE Lab conversion and quantised ab colour bins (Zhang, Isola & Efros 2016, Sec. 2.1).

Torch implementations, batched and on any device, so the target is computed next to the
model rather than in a per-sample NumPy transform. Conversions follow the sRGB / D65
definitions used by scikit-image (tests compare against ``skimage.color.rgb2lab``).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
AB_RANGE = 110.0  # |a|, |b| < 110 for every sRGB colour


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] sRGB in [0, 1] -> Lab with L in [0, 100], a and b in about [-110, 110]."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(rgb), lin) / _WHITE.to(rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_lab``, clipped to [0, 1] (for pictures, not for losses)."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787) * _WHITE.to(lab).view(1, 3, 1, 1)
    lin = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB_TO_XYZ).to(lab), xyz).clamp(0, 1)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin).clamp(0, 1)


@lru_cache(maxsize=4)
def gamut_bins(grid: int = 10, samples_per_axis: int = 48) -> torch.Tensor:
    """Centres [Q, 2] of the ab cells of side ``grid`` that some sRGB colour falls into.

    Zhang et al. report Q = 313 with grid 10, counted on ImageNet images; counting over a
    dense sampling of the whole sRGB cube gives a comparable in-gamut set without data.
    """
    v = torch.linspace(0, 1, samples_per_axis)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb)[0, 1:, :, 0].t()  # [N, 2]
    cells = torch.unique(torch.floor((ab + AB_RANGE) / grid).long(), dim=0)
    return (cells.float() * grid - AB_RANGE + grid / 2).contiguous()


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """ab [B, 2, H, W] -> soft targets [B, Q, H, W]: Gaussian weights (sigma) on the ``k``
    nearest bin centres, normalised to sum to 1 (Zhang et al. 2016, Sec. 2.1)."""
    b, _, h, w = ab.shape
    pts = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    d2 = torch.cdist(pts, centres.to(pts)) ** 2
    near_d2, near_idx = d2.topk(k, dim=1, largest=False)
    wts = torch.exp(-near_d2 / (2 * sigma ** 2))
    wts = wts / wts.sum(dim=1, keepdim=True)
    out = torch.zeros(pts.shape[0], centres.shape[0], device=ab.device, dtype=ab.dtype)
    out.scatter_(1, near_idx, wts)
    return out.view(b, h, w, -1).permute(0, 3, 1, 2)


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """Logits [B, Q, H, W] -> ab [B, 2, H, W] by the annealed mean (Zhang et al. 2016, Eq. 5):
    the mean of the distribution re-sharpened at temperature T (T=1: mean; T->0: mode)."""
    p = F.softmax(logits / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", p, centres.to(p))


def rebalancing_weights(prior: torch.Tensor, lam: float = 0.5, sigma: float = 5.0, centres: torch.Tensor | None = None) -> torch.Tensor:
    """Class-rebalancing weights [Q] (Zhang et al. 2016, Eq. 3-4): the empirical bin
    distribution, smoothed with a Gaussian kernel (sigma, in ab units) over bin centres,
    mixed with the uniform distribution (lam), inverted and normalised to E_prior[w] = 1."""
    p = prior / prior.sum()
    if centres is not None and sigma > 0:
        k = torch.exp(-torch.cdist(centres, centres) ** 2 / (2 * sigma ** 2))
        p = (k / k.sum(dim=1, keepdim=True)) @ p
    w = 1.0 / ((1 - lam) * p + lam / p.numel())
    return w / (p * w).sum()

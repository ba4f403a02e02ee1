"""Multi-view and multi-crop transforms for the contrastive and self-distillation methods.

Each view is drawn with its own random parameters per sample, inside the dataset's
per-sample seeded RNG (``SeededTransformDataset``): never one draw shared by a batch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision.transforms import v2 as T

from harness.data.transforms import to_tensor


class MultiView:
    """One image -> a list of views, the i-th drawn by ``transforms[i]``. Collated by the
    default collate into a list of [B, C, H, W] tensors (one per view)."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img) -> list[torch.Tensor]:
        return [t(img) for t in self.transforms]


def blur_kernel(size: int) -> int:
    """SimCLR's blur kernel: 10% of the image side, made odd (Chen et al. 2020, App. A)."""
    k = max(3, int(round(0.1 * size)))
    return k if k % 2 else k + 1


def ssl_augment(size: int, *, crop_scale=(0.08, 1.0), flip: bool = True, jitter: float = 0.4,
                hue: float = 0.1, jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.0,
                solarize_p: float = 0.0, saturation: float | None = None, normalize: bool = True) -> T.Compose:
    """The augmentation family shared by SimCLR, MoCo v2, BYOL, SwAV, DINO, Barlow Twins and
    VICReg: random resized crop, flip, colour jitter (brightness/contrast/saturation
    ``jitter``, hue ``hue``) with probability ``jitter_p``, greyscale, Gaussian blur
    (sigma 0.1-2.0) and solarisation. Each method's recipe states its own probabilities.
    ``saturation`` overrides ``jitter`` for saturation alone (BYOL and the methods that
    copy its augmentations use brightness/contrast 0.4 but saturation 0.2)."""
    steps = [T.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if jitter_p > 0 and (jitter > 0 or hue > 0):
        sat = jitter if saturation is None else saturation
        steps.append(T.RandomApply([T.ColorJitter(jitter, jitter, sat, hue)], p=jitter_p))
    if grayscale_p > 0:
        steps.append(T.RandomGrayscale(grayscale_p))
    if blur_p > 0:
        steps.append(T.RandomApply([T.GaussianBlur(blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        steps.append(T.RandomSolarize(128, p=solarize_p))  # on uint8 PIL values, as BYOL/DINO
    return T.Compose(steps + [to_tensor(normalize)])


def augment_from_cfg(cfg, prefix: str, size: int | None = None) -> T.Compose:
    """``ssl_augment`` with the keyword values found under ``<prefix>.*`` in the config
    (e.g. ``method.view1.blur_p``), falling back to ``method.aug.*`` and then to defaults."""
    import inspect

    names = [p for p in inspect.signature(ssl_augment).parameters if p != "size"]
    kwargs = {}
    for name in names:
        for key in (f"{prefix}.{name}", f"method.aug.{name}"):
            if key in cfg.values:
                kwargs[name] = cfg[key]
                break
    return ssl_augment(int(size or cfg["data.image_size"]), **kwargs)


# The embedded digits suite's multi-crop (SwAV's and DINO's profiles): 2 x 32px global and
# 4 x 16px local crops on a half-width small ResNet. Digits are not mirror-symmetric: a
# flip would change what they show.
DIGITS_MULTI_CROP = {
    "backbone.name": "resnet_small",
    "backbone.width": 0.5,
    "method.local_size": 16,
    "method.n_local": 4,
    "method.aug.crop_scale": [0.4, 1.0],
    "method.local.crop_scale": [0.15, 0.4],
    "method.aug.flip": False,
}


def multi_crop(global_views: Sequence[Callable], local_view: Callable | None, n_local: int) -> MultiView:
    """SwAV / DINO multi-crop: the global views first, then ``n_local`` small crops."""
    if n_local and local_view is None:
        raise ValueError("n_local > 0 needs a local_view transform")
    return MultiView(list(global_views) + [local_view] * n_local)


def split_by_size(views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Multi-crop batches [B, C, H, W] per view -> consecutive views of one resolution
    concatenated ([global crops, local crops]). SwAV and DINO run the backbone once per
    resolution (official ``ResNet.forward`` / ``MultiCropWrapper``), so BatchNorm sees one
    resolution at a time."""
    groups: list[list[torch.Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
            groups[-1].append(v)
        else:
            groups.append([v])
    return [torch.cat(g) for g in groups]

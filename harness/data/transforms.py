"""Transforms shared by methods and evaluations."""
from __future__ import annotations

from torchvision.transforms import v2 as T
import torch

# ImageNet channel statistics used by torchvision models and every SSL codebase we follow.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(normalize: bool = True) -> T.Compose:
    steps = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return T.Compose(steps)


def eval_resize_crop(image_size: int, resize_ratio: float = 256 / 224) -> T.Compose:
    """Resize then centre crop (ImageNet convention: Resize 256 + CenterCrop 224), image to image."""
    return T.Compose([T.Resize(int(round(image_size * resize_ratio)), antialias=True), T.CenterCrop(image_size)])


def eval_transform(image_size: int, resize_ratio: float = 256 / 224) -> T.Compose:
    """The evaluation view: ``eval_resize_crop`` then a normalised tensor."""
    return T.Compose([eval_resize_crop(image_size, resize_ratio), to_tensor()])


def crop_flip_transform(image_size: int, scale_min: float = 0.08, flip: bool = True, normalize: bool = True) -> T.Compose:
    """RandomResizedCrop (+ horizontal flip): the standard linear-probe training transform.
    ``normalize=False`` keeps RGB in [0, 1] for methods that build targets from colour."""
    steps = [T.RandomResizedCrop(image_size, scale=(scale_min, 1.0), antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [to_tensor(normalize)])


def resize_crop_transform(image_size: int, resize_ratio: float = 256 / 224, flip: bool = False) -> T.Compose:
    """Resize the shorter side to ``resize_ratio`` x size, then a random crop (+ flip): the
    Revisiting SSL linear-eval preprocessing (``resize_small,crop``), no scale change."""
    steps = [T.Resize(int(round(image_size * resize_ratio)), antialias=True), T.RandomCrop(image_size)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [to_tensor()])


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images [B, 3, H, W] -> RGB in [0, 1] (pictures, colour targets)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)

"""Harness ResNet v1 weights -> detectron2's parameter names, as MoCo's
``detection/convert-pretrain-to-detectron2.py`` does (its renaming rules; the harness names
its stem ``stem.0`` / ``stem.1`` where torchvision has ``conv1`` / ``bn1``):

    stem.0.*            -> stem.conv1.*
    stem.1.*            -> stem.conv1.norm.*
    layerN.*            -> res{N+1}.*
    bnK                 -> convK.norm
    downsample.0 / .1   -> shortcut / shortcut.norm

Works for every depth and width the harness builds (the names do not depend on them). The
saved file is what detectron2's checkpointer reads: ``{"model": {name: ndarray},
"__author__": ..., "matching_heuristics": True}`` pickled.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from harness.errors import UsageError

_STEM = {"stem.0.": "stem.conv1.", "stem.1.": "stem.conv1.norm."}


def detectron2_name(key: str) -> str | None:
    """The detectron2 name of a harness ResNet parameter or buffer (None: not part of the
    detector's backbone, e.g. BN's ``num_batches_tracked``)."""
    if key.endswith("num_batches_tracked"):
        return None
    for old, new in _STEM.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"layer([1-4])\.(.*)$", key)
    if not m:
        return None  # pooling / heads: not in the detector
    rest = m.group(2)
    rest = re.sub(r"\bbn([1-3])\b", r"conv\1.norm", rest)
    rest = rest.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    return f"res{int(m.group(1)) + 1}.{rest}"


def convert_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """detectron2-named tensors of a harness ResNet v1 backbone (``harness.backbones.resnet``)."""
    from harness.backbones.resnet import ResNet

    if not isinstance(backbone, ResNet):
        raise UsageError(f"the detectron2 backend converts ResNet v1 backbones (resnet18..152, resnet_small); "
                         f"got {type(backbone).__name__}: use eval.detection.backend=torchvision for other families")
    out = {}
    for key, value in backbone.state_dict().items():
        name = detectron2_name(key)
        if name is not None:
            out[name] = value.detach().cpu()
    return out


def save_detectron2_weights(backbone: nn.Module, path: str | Path, author: str = "ssl-harness") -> Path:
    """Write the converted weights as the pickle detectron2's checkpointer loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = {k: v.numpy() for k, v in convert_state_dict(backbone).items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump({"model": model, "__author__": author, "matching_heuristics": True}, f)
    tmp.replace(path)
    return path

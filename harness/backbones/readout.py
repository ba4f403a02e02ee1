"""Read-out: which layer of a backbone an evaluation reads, and how maps become vectors.

Which layer is probed changes the ranking of pretext methods (Kolesnikov et al. 2019,
Sec. 4.2), so the layer is configuration (``backbone.probe_layer``, ``eval.linear.layers``)
and the pooling of stage maps is the protocol's (average, or Revisiting's max pooling).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.errors import UsageError

PROBE_LAYERS = ("pre_logits", "block1", "block2", "block3", "block4", "block5")  # block5: AlexNet and VGG conv5
MAX_FEATURES = 9000  # Revisiting SSL, linear_eval.py: taps above this are max-pooled down
POOLINGS = ("avg", "max9000")
READOUTS = ("probe_layer", "dino", "last4_cls", "cls_avgpool")


def pool_maps(maps: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, C, H, W] -> [B, D]: global average (``avg``), or adaptive max pooling to the
    finest s x s grid with s * s * C <= 9,000 (``max9000``)."""
    if pool == "avg":
        return maps.mean(dim=(2, 3))
    if pool == "max9000":
        c, h, w = maps.shape[1:]
        if c * h * w <= MAX_FEATURES:
            return maps.flatten(1)
        s = max(1, min(h, w, math.isqrt(MAX_FEATURES // c)))
        return F.adaptive_max_pool2d(maps, s).flatten(1)
    raise UsageError(f"eval.linear.pooling={pool!r}: expected avg or max9000")


def readout_features(method, x: torch.Tensor, readout: str) -> torch.Tensor:
    """The features a linear probe reads. ``probe_layer``: the method's representation
    (``backbone.probe_layer``). ``last4_cls`` / ``cls_avgpool``: DINO's ViT read-outs (the
    class tokens of the last four blocks; the last block's class token and mean patch
    token). ``dino``: what DINO's eval_linear.py picks: last4_cls for ViT-S and smaller,
    cls_avgpool for ViT-B, the pooled features of any other backbone."""
    backbone = getattr(method, "backbone", None)
    if readout == "probe_layer":
        return method.features(x)
    is_vit = hasattr(backbone, "forward_readout")
    if readout == "dino":
        if not is_vit:
            return method.features(x)
        readout = "cls_avgpool" if backbone.num_features >= 768 else "last4_cls"
    if not is_vit:
        raise UsageError(f"eval.linear.readout={readout}: needs a ViT backbone, not '{method.cfg['backbone.name']}'")
    return backbone.forward_readout(x, readout)

"""CPC v1, image version (van den Oord, Li & Vinyals 2018, Sec. 3.3).

The same machinery as CPC v2 (methods.cpc_v2) with v1's settings, so the two can be
compared on equal terms: batch norm in the encoder, no per-patch augmentation, and
predictions up to 5 rows below on the 7x7 grid. What Hénaff et al. (2020, Sec. 4.1,
Fig. 2) changed on the way to v2 is exactly the difference between the two recipes.
"""
from __future__ import annotations

from harness.config import P
from methods.base import glyphs_budget
from methods.cpc_v2 import CPCv2

OORD = "van den Oord et al. 2018 (CPC v1), Sec. 3.3"


class CPCv1(CPCv2):
    name = "cpc_v1"
    family = "contrastive"
    description = "CPC v1: patch grid, masked-conv autoregressive context, InfoNCE up to 5 rows below"
    source = "van den Oord, Li & Vinyals, arXiv 1807.03748, 2018"
    recipes = {
        "default": {
            **CPCv2.recipes["default"],
            "backbone.name": P("resnet50", f"{OORD} uses ResNet-v2-101; ResNet-50 is the common comparison point"),
            "backbone.norm": P("batch", f"{OORD}: batch norm (v2 replaced it by layer norm)"),
            "method.pred_steps": P(5, f"{OORD}: up to 5 rows below"),
            "method.per_patch_aug": P(False, f"{OORD}: no per-patch augmentation (added in v2)"),
            "method.color_drop_p": P(0.0, f"{OORD}: no colour dropping (added in v2)"),
        },
    }
    suite_profiles = {
        "imagenet": CPCv2.suite_profiles["imagenet"],
        # v2's digits geometry and budget, with v1's choices kept: batch norm, no patch aug.
        "digits": {k: v for k, v in CPCv2.suite_profiles["digits"].items() if k not in ("method.color_drop_p",)},
        # 6 epochs: its 8 digits epochs took 344 s alone and 533 s with two runs at once on
        # glyphs' 10,000 images, too close to the 6-minute budget (bench/RESULTS.md, the glyphs
        # table); v2 runs 4 there with the same geometry.
        "glyphs": glyphs_budget(6),
    }

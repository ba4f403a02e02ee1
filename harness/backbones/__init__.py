"""``create_backbone(name, **kw)``: the one way to build a backbone.

Every backbone exposes ``num_features``, ``forward(x) -> [B, num_features]`` (the pooled
representation every evaluation reads) and ``forward_maps(x) -> [B, C, H, W]``.
"""
from __future__ import annotations

import inspect

from torch import nn

from harness import registry
from harness.errors import UsageError


def create_backbone(name: str, **kwargs) -> nn.Module:
    factory = registry.backbones.get(name)
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise UsageError(
                f"backbone '{name}' does not take {', '.join(unknown)}; it takes: {', '.join(params) or 'nothing'}"
            )
    model = factory(**kwargs)
    for attr in ("num_features", "forward_maps"):
        if not hasattr(model, attr):
            raise TypeError(f"backbone '{name}' ({type(model).__name__}) lacks required attribute '{attr}'")
    return model

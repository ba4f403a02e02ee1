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


def cost(name: str, image_size: int, **kwargs) -> tuple[int, int]:
    """(parameters, forward FLOPs for one image) of backbone ``name`` built for
    ``image_size`` inputs as methods build it (small-input stems at 64 px and below, ViTs at
    that size). FLOPs count a multiply-add as 2 (torch.utils.flop_counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = inspect.signature(registry.backbones.get(name)).parameters
    if "small_input" in params:
        kwargs.setdefault("small_input", image_size <= 64)
    if "img_size" in params:
        kwargs.setdefault("img_size", image_size)
    # On the meta device: shapes only, so CPC's 300M-parameter encoder costs no memory or init.
    with torch.device("meta"):
        model = create_backbone(name, **kwargs).eval()
        n_params = sum(p.numel() for p in model.parameters())
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    return n_params, int(counter.get_total_flops())

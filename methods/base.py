"""The method plugin interface.

A method is small: it declares recipes (hyperparameters with their sources), how it makes
views and pretext targets from one image, its heads, and its loss. The trainer owns the
loop, optimizer, schedules, AMP, checkpointing and logging.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from harness import registry
from harness.backbones import create_backbone
from harness.backbones.readout import PROBE_LAYERS, pool_maps
from harness.config import Config, P


class Method(nn.Module):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""
    # The kind of method ("contrastive", "pretext task", ...): a tag on every run, which the
    # leaderboard filters by without importing the method.
    family: ClassVar[str] = "other"
    # "floor" or "ceiling" for the baselines every method is read against ("" otherwise).
    baseline: ClassVar[str] = ""
    # recipe name -> flat dotted config values (``P(value, source)`` for cited ones).
    recipes: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}
    # suite name -> values that adapt the recipe to that suite's budget and image size.
    suite_profiles: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg

    # -- construction helpers -------------------------------------------------------------
    def build_backbone(self, input_size: int, **overrides) -> nn.Module:
        """The configured backbone, given the options its factory takes: width and norm,
        whether its input is small (CIFAR-style stem), or the input size (ViTs)."""
        from harness.config import DEFAULTS
        from harness.errors import UsageError

        name = self.cfg["backbone.name"]
        params = inspect.signature(registry.backbones.get(name)).parameters
        kwargs = {}
        for key in ("width", "norm"):
            value = self.cfg[f"backbone.{key}"]
            if key in params:
                kwargs[key] = value
            # A profile's width was chosen for its own backbone, so on a backbone without widths
            # only a width the user asked for is an error; a recipe's norm (CPC v2's layer norm)
            # is part of the method and never dropped silently.
            elif (key not in overrides and value != DEFAULTS[f"backbone.{key}"].value
                  and (key == "norm" or self.cfg.user_set(f"backbone.{key}"))):
                raise UsageError(f"backbone '{name}' has no {key} option (backbone.{key}={value!r}); "
                                 f"it takes: {', '.join(params)}")
        if "small_input" in params:
            kwargs["small_input"] = input_size <= 64
        # A recipe's zero-init choice concerns ResNet v1 blocks; backbones without them ignore it.
        if "zero_init_residual" in params:
            kwargs["zero_init_residual"] = bool(self.cfg["backbone.zero_init_residual"])
        elif self.cfg["backbone.zero_init_residual"] and self.cfg.user_set("backbone.zero_init_residual"):
            raise UsageError(f"backbone.zero_init_residual=true: backbone '{name}' has no ResNet v1 residual blocks "
                             "to zero-initialise; drop the override or choose a resnet backbone")
        if "img_size" in params:
            kwargs["img_size"] = input_size
        kwargs.update(overrides)
        return create_backbone(name, **kwargs)

    # -- what the trainer calls -----------------------------------------------------------
    def train_transform(self) -> Callable:
        """PIL image -> one training sample (tensor or tuple of tensors). Runs under a
        per-sample seeded torch RNG, so it may draw from torch's global generator freely."""
        raise NotImplementedError

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """A collated batch -> {'loss': scalar, ...other scalars to log}. Labels in the batch
        are there for supervised baselines; self-supervised methods must ignore them."""
        raise NotImplementedError

    def prepare(self, dataset) -> None:
        """Before the first step of a fresh run (not on resume): statistics a method needs
        from its training data (e.g. colorization's bin prior). State it computes must live
        in buffers, so checkpoints carry it."""

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at ``train.lr`` throughout, outside the warmup and decay (SimSiam's
        predictor under ``--fix-pred-lr``). Read once, when the optimizer is built."""
        return []

    def before_optimizer_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        """After backward, before the optimizer step and gradient clipping: gradients a method
        holds back (SwAV's prototypes and DINO's last layer during the first epoch)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After the optimizer step (momentum encoders, queues, schedules of the method)."""

    # -- what the evaluations call --------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> representation [B, D] read by linear probes and kNN."""
        return self.represent(x)

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's representation of ``x`` at ``backbone.probe_layer``: the pooled
        output (``pre_logits``) or a stage's maps, average-pooled (``block1``..``block4``),
        since which layer is probed changes the ranking of pretext methods (Kolesnikov et
        al. 2019, Sec. 4.2)."""
        block = self._probe_block()
        if block is None:
            return self.backbone(x)
        return self.backbone.forward_block(x, block).mean(dim=(2, 3))

    def represent_layers(self, x: torch.Tensor, layers: list[str], pool: str = "avg") -> dict[str, torch.Tensor]:
        """Several read-outs of one pass (multi-layer linear probes): ``pre_logits`` and the
        maps of ResNet stages ``block1``..``block4``, average-pooled (``pool="avg"``) or, as
        the Revisiting SSL code does (``"max9000"``), max-pooled to the finest square grid
        that keeps at most 9,000 features (linear_eval.py ``apply_fractional_pooling``)."""
        from harness.errors import UsageError

        unknown = [l for l in layers if l not in PROBE_LAYERS]
        if unknown:
            raise UsageError(f"eval.linear.layers: unknown layer(s) {', '.join(unknown)}; expected some of {', '.join(PROBE_LAYERS)}")
        if set(layers) == {"pre_logits"}:
            return {"pre_logits": self.backbone(x)}
        if not hasattr(self.backbone, "forward_stages") or not self.probes_blocks:
            raise UsageError(f"eval.linear.layers={layers}: method '{self.name}' with backbone "
                             f"'{self.cfg['backbone.name']}' can only be probed at pre_logits")
        stages = self.backbone.forward_stages(x)
        return {l: stages[l] if l == "pre_logits" else pool_maps(stages[l], pool) for l in layers}

    def _probe_block(self) -> int | None:
        from harness.errors import UsageError

        layer = self.cfg.get("backbone.probe_layer", "pre_logits")
        if layer == "pre_logits":
            return None
        if layer not in PROBE_LAYERS:
            raise UsageError(f"backbone.probe_layer={layer!r}: expected one of {', '.join(PROBE_LAYERS)}")
        if not hasattr(self.backbone, "forward_block") or not self.probes_blocks:
            raise UsageError(f"backbone.probe_layer={layer!r}: method '{self.name}' with backbone "
                             f"'{self.cfg['backbone.name']}' can only be probed at pre_logits")
        return PROBE_LAYERS.index(layer)

    # True: batches are (views, labels, dataset indices), for memory banks.
    needs_index: ClassVar[bool] = False

    # False: pretrain on the labelled train split only, never on a suite's unlabeled images
    # (label -1, e.g. STL-10's), because the objective needs a label for every image.
    uses_unlabeled: ClassVar[bool] = True

    # Methods whose representation is not one pass of the backbone over the image (patch
    # grids, two-network encoders, ViTs) set this False.
    probes_blocks: ClassVar[bool] = True

    @property
    def num_features(self) -> int:
        block = self._probe_block()
        return self.backbone.num_features if block is None else self.backbone.block_channels(block)


# For the digits profiles of recipes that zero-initialise residual branches: the embedded suite's
# resnet_small has one block per stage, so with every branch at zero the untrained network is
# little more than its stem and shortcut convolutions (kNN 19.8 against 35.4 untrained), and each
# of those methods trained to lower numbers that way (bench/RESULTS.md, "Follow-up: two details
# of the official codes").
TORCHVISION_INIT_ON_DIGITS = {"backbone.zero_init_residual": False}


# glyphs gives every image a random glyph colour and background gradient; standard colour
# jitter (hue 0.1) keeps them, so "which colours" identifies an image across its two views and
# the non-contrastive objectives settle on it instead of the shape. Greyscale views take that
# code away: vicreg kNN top-1 13.2 -> 21.4 % (linear 20.8 -> 37.7), byol 9.8 -> 12.9, moco_v2
# linear 18.7 (8 epochs, colour) -> 23.9 (6, grey) (seed 0, bench/RESULTS.md, glyphs probes).
# SimCLR's in-batch contrast does not need it (46.3 % with colour views).
GREY_VIEWS_ON_GLYPHS = {"method.aug.grayscale_p": 1.0}


def glyphs_budget(epochs: int, extra: dict | None = None) -> dict:
    """A method's `glyphs` profile on top of its `digits` one (glyphs takes those by
    ``profile_from``): the budget for glyphs' 10,000 training images (3.5x digits'), sized so
    the method's default run stays within 6 minutes on a 2-core CPU, kNN and linear
    evaluation included (bench/RESULTS.md, the glyphs table)."""
    return {"train.epochs": epochs, **(extra or {})}

__all__ = ["Method", "P"]

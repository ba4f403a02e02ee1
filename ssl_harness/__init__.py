"""The public API for plugin authors: what a method, eval, backbone or suite package imports.

Kept stable across releases; everything else in ``harness``, ``methods``, ``evals`` and
``leaderboard`` is private and may change. A plugin package registers its classes through
entry points (``harness.methods``, ``harness.evals``, ``harness.backbones``, ``harness.suites``)
and imports only from here (`harness new method NAME` writes such a package).

- ``Method``: a self-supervised method (``train_transform``, ``training_step``, optional hooks;
  ``recipes`` of cited config values, ``suite_profiles``; ``build_backbone``).
- ``Evaluator``: an evaluation protocol (``run``; ``metrics`` / ``headline`` declarations,
  ``needs`` data kinds, ``presets`` of cited values, ``rules``).
- ``Metric``, ``HIGHER``, ``LOWER``, ``top1``, ``top5``: metric declarations.
- ``create_backbone``: a registered backbone by name.
- ``P``: a config value with its source (``P(0.1, "Chen et al. 2020, Table 1")``).
- ``Suite`` and the data kinds ``CLASSIFICATION``, ``DETECTION``, ``CORRUPTIONS``.
- Views: ``crop_flip_transform``, ``eval_transform``, ``to_tensor``.
- ``UsageError``: the one-line error for bad input (exit code 2, no traceback).
"""
from evals.base import Evaluator, top1, top5
from harness.backbones import create_backbone
from harness.config import P
from harness.data.base import CLASSIFICATION, CORRUPTIONS, DETECTION, Suite
from harness.data.transforms import crop_flip_transform, eval_transform, to_tensor
from harness.errors import UsageError
from harness.metrics import HIGHER, LOWER, Metric
from methods.base import Method

__all__ = ["Method", "Evaluator", "Metric", "HIGHER", "LOWER", "top1", "top5", "create_backbone", "P", "Suite",
           "CLASSIFICATION", "DETECTION", "CORRUPTIONS", "crop_flip_transform", "eval_transform", "to_tensor",
           "UsageError"]

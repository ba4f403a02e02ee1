"""Robustness to common corruptions: ImageNet-C's mCE and relative mCE (Hendrycks & Dietterich 2019).

The classifier is the frozen backbone plus the linear probe the run's ``eval.linear`` config
trains on clean training data (the linear eval's own head when it already ran for this config,
else trained here and kept for it), scored on every corruption x severity of the suite's
corrupted test sets (``harness.data.corruptions``: the ImageNet-C or CIFAR-10-C release, or
copies generated for any suite).

mCE needs a normaliser (``mce.py``): on ImageNet the published AlexNet errors; on any other
set, an AlexNet the harness trained supervised on that suite and scored on the very same
corrupted images (``harness run --method supervised --backbone alexnet --eval robustness``
records it). Without one the eval reports the unnormalised errors, its headline is then the
mean error, and its label says ``unnormalized``: an unnormalised number never sits in an mCE column.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

from harness.config import P, each, integer, one_of
from harness.data.base import CORRUPTIONS, data_home
from harness.data.corruptions import (ALL_CORRUPTIONS, CIFAR_C, HENDRYCKS, IMAGENET_C, SEVERITIES,
                                      check_corruptions, corrupted_sets, read_release)
from harness.data.transforms import eval_transform, to_tensor
from harness.errors import UsageError
from harness.metrics import LOWER, Declaration, Metric
from harness.progress import progress
from evals.base import Evaluator
from evals.linear import LinearProbe
from evals.robustness.mce import ALEXNET_IMAGENET, SOURCE as ALEXNET_SOURCE, ErrorTable, summarize

# How a result was normalised, named in its label.
PUBLISHED, HARNESS_ALEXNET, UNNORMALIZED = "alexnet", "alexnet_run", "unnormalized"
FIGURE, RECORD = "corruption_errors.png", "robustness.json"
# The run that measures a suite's normaliser.
REFERENCE_METHOD, REFERENCE_BACKBONE = "supervised", "alexnet"

MCE = Metric("mce", LOWER, "%", "mean corruption error over the 15 ImageNet-C corruptions, normalised by AlexNet "
                                "(100 = AlexNet)")
METRICS = (
    MCE,
    Metric("relative_mce", LOWER, "%", "mean relative corruption error (the error a corruption adds, over AlexNet's)"),
    Metric("clean_error", LOWER, "%", "top-1 error of the same classifier on the clean images"),
    Metric("mean_error", LOWER, "%", "top-1 error over the 15 corruptions x 5 severities, unnormalised"),
    Metric("extra_mean_error", LOWER, "%", "top-1 error over the 4 extra corruptions (not in mCE)"),
)


class Robustness(Evaluator):
    name = "robustness"
    protocol = "robustness"
    description = "corruption errors of the linear probe, mCE and relative mCE (ImageNet-C protocol)"
    source = HENDRYCKS
    default_preset = "imagenet_c"
    metrics = METRICS
    headline = "mce"
    needs = (CORRUPTIONS,)
    rules = {"corruptions": each(one_of(*ALL_CORRUPTIONS)), "images_per_class": integer(0),
             "seed": integer(0), "workers": integer(0), "batch_size": integer(1), "normalizer": one_of("auto", "none")}
    presets = {
        "imagenet_c": {
            "corruptions": P(list(ALL_CORRUPTIONS), f"{HENDRYCKS}: 15 corruptions in mCE + 4 extra, 5 severities each"),
            "data_root": P("", "harness: '' = the suite's own corrupted sets (generated for generated suites); "
                               "else an ImageNet-C / CIFAR-10-C release or a `harness data make-corruptions` folder"),
            "images_per_class": P(0, "harness: 0 = every val image is corrupted (as ImageNet-C)"),
            "seed": P(0, "harness: generation seed, fixed so every run of a suite scores the same images"),
            "workers": P(0, "harness: generation worker processes (0 = one per core, at most 8)"),
            "batch_size": P(256, "harness: inference batch"),
            "normalizer": P("auto", f"{ALEXNET_SOURCE}: AlexNet's errors on ImageNet; elsewhere the suite's "
                                    "AlexNet reference run when one exists ('none': unnormalised)"),
        },
    }

    def __init__(self, cfg, feature_cache=None):
        super().__init__(cfg, feature_cache)
        self.normalised_by: str | None = None  # set by run(): PUBLISHED, HARNESS_ALEXNET or UNNORMALIZED
        self.record: dict = {}

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        p = cfg.section("eval.robustness")
        check_corruptions(p["corruptions"])
        if p["data_root"]:
            if not Path(p["data_root"]).expanduser().is_dir():
                raise UsageError(f"eval.robustness.data_root={p['data_root']}: no such folder (expected an ImageNet-C "
                                 f"release <root>/<corruption>/<1-5>/<wnid>/*.JPEG or a CIFAR-10-C folder of .npy files)")
            from harness import registry

            # A missing corruption or severity fails now, not after pretraining.
            read_release(registry.suites.get(cfg["suite.name"]).corruption_layout, p["data_root"], p["corruptions"])

    # -- what a result is labelled and ranked by (known once run() chose the normaliser) ----
    @property
    def preset(self) -> str:
        probe = f"{self.cfg['eval.linear.preset']}-probe"
        return "/".join([self.params["preset"], probe, self.normalised_by or self._expected_normaliser()])

    def _expected_normaliser(self) -> str:
        return UNNORMALIZED if self.params["normalizer"] == "none" else "auto"

    def declaration(self) -> Declaration:
        return Declaration(self.metrics, "mce" if self.normalised_by in (PUBLISHED, HARNESS_ALEXNET) else "mean_error")

    def result_tags(self) -> dict[str, str]:
        return {"harness.robustness.normalizer": self.record.get("normalizer", {}).get("name", ""),
                "harness.robustness.data_hash": self.record.get("corrupted_sets", {}).get("content_hash", ""),
                "harness.robustness.probe": self.record.get("probe", "")}

    def artifacts(self, out_dir) -> list[Path]:
        # The error by corruption and severity as a figure on the eval's MLflow run page.
        return [p for p in (Path(out_dir) / FIGURE, Path(out_dir) / RECORD) if p.is_file()]

    # -- the evaluation --------------------------------------------------------------------------
    def run(self, method, suite, device, out_dir):
        p, cfg = self.params, self.cfg
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        sets = corrupted_sets(suite, p["corruptions"], p["data_root"], int(p["images_per_class"]), int(p["seed"]),
                              int(p["workers"]), cfg["data.eval_resize_ratio"])
        size = int(cfg["data.image_size"])

        clean_tf = eval_transform(size, cfg["data.eval_resize_ratio"])
        clean = suite.split("val", clean_tf)
        if sets.clean_indices is not None:  # generated from a subset of val: the same images, clean
            clean = Subset(clean, sets.clean_indices)
        # Released ImageNet-C and generated sets are already resized and cropped; CIFAR-C is
        # raw 32 px like the clean val split, so it gets the same view as the clean images.
        corrupted_tf = clean_tf if sets.layout == CIFAR_C else to_tensor()
        parts = {("clean", 0): clean}
        for c in sets.corruptions:
            for s in SEVERITIES:
                parts[(c, s)] = ds = sets.dataset(c, s, corrupted_tf)
                sets.check_image_size(ds, size)
        probe = LinearProbe(cfg, feature_cache=self.feature_cache)
        head, read, reused = probe.trained_head(method, suite, device, out_dir)
        method.eval()
        head_key = probe_head(cfg)
        # One loader over every set: 96 small sets would otherwise pay a loader's start-up each.
        with torch.no_grad():
            loader = DataLoader(ConcatDataset(list(parts.values())), batch_size=int(p["batch_size"]),
                                num_workers=int(cfg["data.num_workers"]))
            chunks = []
            for x, y in progress(loader, desc="robustness: clean + corrupted sets", unit="batch"):
                pred = head[head_key](read(x.to(device))[head_key].float()).argmax(1).cpu()
                chunks.append(pred != torch.as_tensor(y))
            wrong = torch.cat(chunks)
        errors, start = {}, 0
        for key, ds in parts.items():
            errors[key] = float(wrong[start:start + len(ds)].float().mean())
            start += len(ds)
        clean_error = errors[("clean", 0)]
        table = {c: tuple(errors[(c, s)] for s in SEVERITIES) for c in sets.corruptions}
        model = ErrorTable(clean_error, table)

        self._record_reference(model, sets, out_dir)
        reference, normaliser = self._normaliser(suite, sets, model, out_dir)
        try:
            metrics = summarize(model, reference)
        except ValueError as e:  # a reference that cannot normalise (it never errs): say so, unnormalised
            reference, normaliser = None, {"kind": UNNORMALIZED, "name": f"none: {e} ({normaliser['name']})"}
            metrics = summarize(model, None)
        if reference is not None and "relative_mce" not in metrics:
            normaliser["relative"] = "undefined: the reference's corruptions add no error over its clean error"
        self.normalised_by = normaliser["kind"]
        metrics["images_per_set"] = float(len(parts[(sets.corruptions[0], 1)]))
        metrics["probe_reused"] = float(reused)
        self.record = {"errors": model.to_dict(), "normalizer": normaliser,
                       "probe": f"linear/{probe.preset}" + ("" if head_key == "probe" else f" ({head_key} head)"),
                       "probe_reused": reused, "corrupted_sets": sets.to_record(), "metrics": metrics}
        (out_dir / RECORD).write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        from harness.plots import corruption_errors

        corruption_errors(model.to_dict(), out_dir / FIGURE,
                          f"{cfg['method.name']} / {cfg['backbone.name']} / {cfg['suite.name']}: top-1 error by corruption")
        return metrics

    # -- normalisers ------------------------------------------------------------------------------
    def _is_reference_run(self) -> bool:
        return self.cfg["method.name"] == REFERENCE_METHOD and self.cfg["backbone.name"] == REFERENCE_BACKBONE

    def _record_reference(self, model: ErrorTable, sets, out_dir: Path) -> None:
        """A supervised AlexNet's errors become its suite's normaliser for these exact images
        (and a reference run normalises by its own errors, so its mCE is 100 by definition)."""
        if not self._is_reference_run():
            return
        folder = reference_dir(sets.content_hash)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{self.cfg.hash[:12]}-s{self.cfg['seed']}"
        from harness.rundir import write_json

        write_json(folder / f"{name}.json", {"errors": model.to_dict(), "run": str(out_dir.parent.parent),
                                            "config_hash": self.cfg.hash, "seed": self.cfg["seed"],
                                            "suite": self.cfg["suite.name"]})

    def _normaliser(self, suite, sets, model: ErrorTable, out_dir: Path) -> tuple[ErrorTable | None, dict]:
        if self.params["normalizer"] == "none":
            return None, {"kind": UNNORMALIZED, "name": "none (eval.robustness.normalizer=none)"}
        if suite.name == "imagenet":
            # Measured on the release; a generated ImageNet-C (no release at hand) is normalised by
            # the same table, and its record says the images are not the release's.
            note = "" if sets.layout == IMAGENET_C else " (measured on the release; these images were generated)"
            return ALEXNET_IMAGENET, {"kind": PUBLISHED, "name": ALEXNET_SOURCE + note}
        if self._is_reference_run():
            return model, {"kind": HARNESS_ALEXNET, "run": str(out_dir.parent.parent), "config_hash": self.cfg.hash,
                           "seed": self.cfg["seed"], "name": "itself (a supervised AlexNet reference run)"}
        refs = sorted(reference_dir(sets.content_hash).glob("*.json"))
        if not refs:
            return None, {"kind": UNNORMALIZED, "name": (
                f"none: no AlexNet reference for these corrupted sets (run `harness run --method "
                f"{REFERENCE_METHOD} --backbone {REFERENCE_BACKBONE} --suite {suite.name} --eval robustness` to make one)")}
        # One reference, chosen by a rule that does not depend on when runs were evaluated once
        # it exists: the lowest seed (then config hash). Averaging whatever references exist
        # would give two runs evaluated a day apart different normalisers.
        records = sorted((json.loads(r.read_text()) for r in refs), key=lambda r: (int(r["seed"]), r["config_hash"]))
        chosen = records[0]
        table = ErrorTable.from_dict(chosen["errors"])
        missing = [c for c in self.params["corruptions"] if c not in table.by_corruption]
        if missing:
            return None, {"kind": UNNORMALIZED, "name": f"none: the AlexNet reference lacks {', '.join(missing)}"}
        return table, {"kind": HARNESS_ALEXNET, "run": chosen["run"], "config_hash": chosen["config_hash"],
                       "seed": chosen["seed"], "name": f"supervised AlexNet run {chosen['run']} (seed {chosen['seed']})"}


def probe_head(cfg) -> str:
    """Which of the linear eval's heads classifies: its single read-out head, or with several
    layers (``eval.linear.layers``) the one at ``backbone.probe_layer`` when trained, else the
    deepest one trained."""
    from harness.backbones.readout import PROBE_LAYERS

    layers = list(cfg["eval.linear.layers"])
    if not layers:
        return "probe"
    probe_layer = cfg.get("backbone.probe_layer", "pre_logits")
    return probe_layer if probe_layer in layers else max(layers, key=PROBE_LAYERS.index)


def reference_dir(content_hash: str) -> Path:
    """Where a corrupted set's AlexNet references live: keyed by the set's content hash, so a
    normaliser is only ever applied to the images it was measured on."""
    return data_home() / "robustness_references" / content_hash.replace(":", "-")[:40]

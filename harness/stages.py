"""The stages of a run: pretraining (resumable) and each evaluation (cached).

Each takes the run context and leaves its result in the run folder; the folder says when a
stage is done, so a re-run of the same command resumes pretraining from its last checkpoint
and skips every finished eval.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import torch

from harness import checkpoint, registry, tags
from harness.context import RunContext
from harness.metrics import Declaration
from harness.plots import loss_curve, reconstruction_grid
from harness.rundir import PRETRAIN
from harness.seeding import derive_seed, seed_everything


def ensure_parent_run(ctx: RunContext, run_name: str) -> str:
    """The folder's MLflow parent run: the one it recorded, or a new one. Under a lock,
    since eval jobs of one run may start together."""
    folder, tracker = ctx.folder, ctx.tracker
    with folder.short_lock("parent-run"):
        parent = folder.parent_run_id()
        if not tracker.run_exists(parent):
            parent = tracker.create_run(run_name, {**ctx.identity, tags.STAGE: tags.STAGE_PRETRAIN}, ctx.cfg.values)
            folder.set_parent_run_id(parent)
            if folder.stage_done(PRETRAIN):
                # Finished before, tracked elsewhere (another store, a deleted run): the new run
                # gets the loss curve from disk, so no tracked run is missing its metrics.
                history = folder.pretrain_history()
                tracker.log_metrics(parent, [(i + 1, {tags.TRAIN_LOSS: v}) for i, v in enumerate(history)])
    return parent


def pretrain(ctx: RunContext):
    """Pretrain (or resume, or reuse the finished result); returns the method on the device."""
    from harness.data.loading import SeededTransformDataset
    from harness.trainer import CheckpointHook, MetricsHook, ProgressHook, Trainer

    cfg, folder, log = ctx.cfg, ctx.folder, ctx.log
    seed_everything(ctx.seed, ctx.deterministic)
    method = ctx.method_cls(cfg)
    if folder.stage_done(PRETRAIN):
        log("[harness] pretraining already finished: using its final weights")
        return method.to(ctx.device)
    suite = ctx.suite
    dataset = SeededTransformDataset(suite.pretrain_split() if method.uses_unlabeled else suite.split("train"),
                                     method.train_transform(), derive_seed(ctx.seed, 0), with_index=method.needs_index)
    # Every process checkpoints (saving gathers their RNG states); only rank 0 shows and tracks.
    hooks = [CheckpointHook(cfg["train.checkpoint_every"])]
    if ctx.main:
        hooks = [ProgressHook(f"pretrain {cfg['method.name']}"), *hooks,
                 MetricsHook(lambda rows: ctx.tracker.log_metrics(ctx.parent, rows), cfg["train.log_every"])]
    trainer = Trainer(method, dataset, cfg.section("train"), ctx.seed, folder.checkpoints, ctx.device, hooks=hooks,
                      num_workers=int(cfg["data.num_workers"]))
    if checkpoint.latest(folder.checkpoints):
        log(f"[harness] resuming pretraining from {checkpoint.latest(folder.checkpoints)}")
    trainer.fit()
    if not ctx.main:
        return method
    tracker, parent = ctx.tracker, ctx.parent
    if trainer.resumed_from is not None:
        tracker.set_tags(parent, {tags.RESUMED_FROM_STEP: trainer.resumed_from})
    checkpoint.save_atomic(method.backbone.state_dict(), folder.backbone_weights)
    tracker.log_artifact(parent, folder.config_yaml)
    tracker.log_artifact(parent, folder.backbone_weights)
    if trainer.history:
        curve = loss_curve(trainer.history, folder.loss_plot,
                           f"{cfg['method.name']} / {cfg['backbone.name']} / {cfg['suite.name']}, seed {ctx.seed}",
                           trainer.steps_per_epoch)
        tracker.log_artifact(parent, curve)
    if hasattr(method, "reconstruct"):
        tracker.log_artifact(parent, _reconstruction_grid(method, dataset, ctx.device, folder.reconstructions))
    # Written last: its existence marks the stage finished, so a kill before it redoes the
    # (idempotent) steps above rather than skipping them.
    checkpoint.save_atomic({"method": method.state_dict(), "history": torch.tensor(trainer.history, dtype=torch.float64)},
                           folder.final_weights)
    checkpoint.last_path(folder.checkpoints).unlink(missing_ok=True)  # the final weights supersede it
    return method


def evaluate(ctx: RunContext, name: str, method, final_state: dict) -> dict[str, float]:
    """Run eval ``name`` once per run folder; a finished one is read back from disk."""
    cfg, folder, tracker, log = ctx.cfg, ctx.folder, ctx.tracker, ctx.log
    ev_cls = registry.evals.get(name)
    ev = ev_cls(cfg, feature_cache=folder.feature_cache)
    declaration = _declaration(ev)
    cached = folder.eval_result(name)
    # A finished result keeps the label and headline it was recorded with (robustness's depend
    # on what its run found).
    label = cached.get("preset", ev.preset) if cached else ev.preset
    if cached and Declaration.from_dict(cached.get("declaration")):
        declaration = Declaration.from_dict(cached["declaration"])
    child = folder.eval_run_id(name)
    if not tracker.run_exists(child):
        child = tracker.create_run(
            f"{name}/{label}", {**ctx.identity, tags.STAGE: tags.STAGE_EVAL, tags.EVAL: name,
                                tags.PROTOCOL: ev_cls.protocol, tags.PRESET: label,
                                tags.METRICS: declaration.to_json()},
            cfg.section(f"eval.{name}"), parent_id=ctx.parent)
        folder.set_eval_run_id(name, child)
        if cached is not None:  # finished before, tracked elsewhere: track the result here too
            tracker.log_metrics(child, [(0, cached["metrics"])])
            tracker.finish(child)
    if cached is not None:
        log(f"[harness] eval '{name}' already finished: cached")
        return cached["metrics"]
    # Fresh weights and a seed of the eval's own: no eval depends on which ran before it.
    method.load_state_dict(final_state["method"])
    method.to(ctx.device)
    seed_everything(derive_seed(ctx.seed, 100, zlib.crc32(name.encode())), ctx.deterministic)
    log(f"[harness] eval '{name}' (preset {ev.preset})")
    label = ev.preset
    with tracker.running(child):
        reported = ev.run(method, ctx.suite, ctx.device, folder.eval_dir(name))
        # What run() found can change the label and the headline (robustness without a
        # normaliser reports unnormalised errors): the tracked run says so before its metrics.
        declaration = _declaration(ev)
        metrics = declaration.check(name, reported)
        changed = {tags.PRESET: ev.preset, tags.METRICS: declaration.to_json()} if ev.preset != label else {}
        tracker.set_tags(child, {**changed, **(ev.result_tags() if hasattr(ev, 'result_tags') else {})})
        tracker.log_metrics(child, [(0, metrics)])
        for path in (ev.artifacts(folder.eval_dir(name)) if hasattr(ev, "artifacts") else []):
            tracker.log_artifact(child, path)
    folder.write_eval_result(name, {"metrics": metrics, "protocol": ev_cls.protocol, "preset": ev.preset,
                                    "config_hash": cfg.hash, "declaration": declaration.to_dict()})
    return metrics


def _declaration(ev) -> Declaration:
    """The eval's declaration: its own (``Evaluator.declaration``), or, for a plugin eval that
    does not subclass ``Evaluator``, its class's ``metrics`` and ``headline``."""
    return ev.declaration() if hasattr(ev, "declaration") else Declaration.of(type(ev))


@torch.no_grad()
def _reconstruction_grid(method, dataset, device, path: Path, n: int = 8) -> Path:
    """Input, target and prediction of the first ``n`` training samples: reconstruction
    methods are judged by eye as much as by number."""
    from torch.utils.data import default_collate

    was = method.training
    method.eval()
    dataset.set_epoch(0)
    # Spread over the dataset: image folders are sorted by class, the first n share one.
    picks = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).long().tolist()
    batch = default_collate([dataset[i] for i in picks])
    batch = tuple(b.to(device) if torch.is_tensor(b) else [t.to(device) for t in b] for b in batch)
    inputs, targets, preds = method.reconstruct(batch)
    method.train(was)
    return reconstruction_grid(inputs, targets, preds, path)

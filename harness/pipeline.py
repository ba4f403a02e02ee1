"""One run: resolve config -> pretrain (resumable) -> each eval (cached) -> tracking.

A stage is a pure function of its config and inputs, and leaves its result in the run's
output directory: re-running the same command resumes pretraining from the last
checkpoint and skips every eval that already finished.
"""
from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import checkpoint, provenance, registry
from harness.config import Config, resolve
from harness.errors import UsageError
from harness.plots import loss_curve, reconstruction_grid
from harness.seeding import derive_seed, seed_everything
from harness.tracking import Tracker
from methods.base import recipe_layers


@dataclass
class RunRequest:
    method: str
    suite: str = "digits"
    backbone: str | None = None
    evals: str = "all"
    seed: int | None = None
    epochs: int | None = None
    output_dir: str | None = None
    tracking_uri: str | None = None
    overrides: dict = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    # Which stages this process runs: None = all ("pretrain", then each eval); a launcher
    # that gives every stage its own job passes ("pretrain",) or ("eval:knn",).
    stages: tuple[str, ...] | None = None
    # Tags added to every tracked run (launcher, sweep id): provenance, not configuration.
    tags: dict = field(default_factory=dict)


def default_output_dir(req: RunRequest, cfg: Config) -> Path:
    return (Path("runs") / f"{req.method}-{cfg['backbone.name']}-{req.suite}-s{cfg['seed']}-{cfg.hash[:8]}").resolve()


def eval_names(spec: str, suite_cls) -> list[str]:
    known = registry.evals.names()
    if spec.strip() == "all":
        return [e for e in known if e in suite_cls.supported_evals]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in known:
            raise UsageError(f"unknown eval '{n}'; known evals: {', '.join(known)} (or 'all')")
        if n not in suite_cls.supported_evals:
            raise UsageError(f"suite '{suite_cls.name}' does not support eval '{n}'; it supports: {', '.join(suite_cls.supported_evals)}")
    return names


def build_config(req: RunRequest) -> tuple[Config, type, type, list[str]]:
    method_cls = registry.methods.get(req.method)
    suite_cls = registry.suites.get(req.suite)
    evals = eval_names(req.evals, suite_cls)
    overrides = dict(req.overrides)
    for key, value in (("backbone.name", req.backbone), ("seed", req.seed), ("train.epochs", req.epochs)):
        if value is not None:
            overrides[key] = value
    overrides["method.name"] = req.method
    overrides["suite.name"] = req.suite
    recipe = overrides.get("method.recipe", "default")
    method_layers = recipe_layers(method_cls, recipe, req.suite)
    layers = []
    # Every registered eval contributes its keys (so overrides of any eval are checked);
    # a preset chosen by the suite or the user selects which published values apply.
    for name in registry.evals.names():
        ev = registry.evals.get(name)
        chosen = overrides.get(f"eval.{name}.preset") or suite_cls.profile.get(f"eval.{name}.preset")
        layers.append((f"{name} eval preset", ev.config_layer(chosen)))
    layers += method_layers[:1]
    layers.append((f"suite '{req.suite}' profile", suite_cls.profile))
    layers += method_layers[1:]
    cfg = resolve(layers, overrides)
    for key in ("train.epochs", "train.batch_size", "data.image_size"):
        if cfg[key] < (0 if key == "train.epochs" else 1):
            raise UsageError(f"{key}={cfg[key]}: expected a {'non-negative' if key == 'train.epochs' else 'positive'} integer")
    if req.backbone is not None:
        registry.backbones.get(req.backbone)  # an unknown name fails here, before any work
    return cfg, method_cls, suite_cls, evals


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def pick_device(cfg: Config) -> torch.device:
    want = cfg["device"]
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={want} but no CUDA device is visible; use device=cpu")
    return torch.device(want)


def rerun_args(req: RunRequest, cfg: Config, out_dir: Path, evals: list[str]) -> list[str]:
    args = ["run", "--method", req.method, "--suite", req.suite, "--backbone", cfg["backbone.name"],
            "--eval", ",".join(evals), "--seed", str(cfg["seed"]), "--epochs", str(cfg["train.epochs"]),
            "--output-dir", str(out_dir)]
    skip = {"backbone.name", "seed", "train.epochs", "method.name", "suite.name"}
    return args + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(req.overrides.items()) if k not in skip]


def execute(req: RunRequest, log=print) -> dict[str, dict[str, float]]:
    from harness import ddp

    cfg, method_cls, suite_cls, evals = build_config(req)
    seed = int(cfg["seed"])
    main = ddp.is_main()
    stages = req.stages or ("pretrain", *(f"eval:{e}" for e in evals))
    run_evals = [e for e in evals if f"eval:{e}" in stages]
    if not main:
        log = lambda *a, **k: None  # noqa: E731  only rank 0 speaks and tracks
    # Data first: a missing dataset fails before anything is written or tracked.
    suite = suite_cls(root=cfg["suite.root"], image_size=cfg["data.image_size"])
    suite.train_subset = int(cfg["data.train_subset"])
    log(f"[harness] suite '{req.suite}': preparing data")
    if main:
        suite.prepare()
    ddp.barrier()  # the other processes read what rank 0 generated
    if not main:
        suite.prepare()
    data_hash = suite.content_hash()
    out_dir = Path(req.output_dir).resolve() if req.output_dir else default_output_dir(req, cfg)
    if not main:
        _pretrain(cfg, method_cls, suite, out_dir, pick_device(cfg), _deterministic(cfg), None, None, log)
        return {}
    tracker = Tracker(req.tracking_uri)  # an unreachable server fails here, before any output
    tracker.spill_path = out_dir / "unsent_metrics.jsonl"
    saved = _read_json(out_dir / "config.json")
    if saved and saved["config_hash"] != cfg.hash:
        raise UsageError(f"{out_dir} holds a run with a different config (hash {saved['config_hash'][:8]}, this one {cfg.hash[:8]}); choose another --output-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "config.json", cfg.to_dict())
    (out_dir / "config.yaml").write_text(cfg.to_yaml())

    device = pick_device(cfg)
    deterministic = _deterministic(cfg)
    commit, dirty = provenance.git_state()
    state = _read_json(out_dir / "state.json", {})
    world = ddp.world_size()
    identity = {
        "harness.method": req.method, "harness.recipe": cfg["method.recipe"], "harness.backbone": cfg["backbone.name"],
        "harness.width": cfg["backbone.width"], "harness.suite": req.suite, "harness.seed": seed,
        "harness.epochs": cfg["train.epochs"], "harness.config_hash": cfg.hash,
        "harness.command": provenance.rerun_command(rerun_args(req, cfg, out_dir, evals)),
        "harness.invocation": provenance.rerun_command(req.argv) if req.argv else "",
        "harness.git_commit": commit, "harness.git_dirty": dirty, "harness.dataset_hash": data_hash,
        "harness.device": provenance.device_description(device), "harness.deterministic": deterministic,
        "harness.versions": json.dumps(provenance.package_versions(), sort_keys=True),
        "harness.slurm_job_id": provenance.slurm_job_id(), "harness.output_dir": str(out_dir),
        "harness.code_dir": provenance.code_dir(),
        # train.lr is given for the global batch; it is split over the processes, never rescaled.
        "harness.world_size": world, "harness.global_batch": cfg["train.batch_size"],
        "harness.per_process_batch": int(cfg["train.batch_size"]) // world,
        "harness.lr_scaling": "none: train.lr is for the global batch train.batch_size, split over the processes",
        **{k: str(v) for k, v in req.tags.items()},
    }
    final_path = out_dir / "pretrain" / "method.pt"
    if not tracker.run_exists(state.get("parent_run_id")):
        state = {"parent_run_id": tracker.create_run(
            f"{req.method}/{cfg['backbone.name']}/{req.suite}/s{seed}", {**identity, "harness.stage": "pretrain"}, cfg.values)}
        _write_json(out_dir / "state.json", state)
        if final_path.exists():
            # Finished before, tracked elsewhere (another store, a deleted run): the new run
            # gets the loss curve from disk, so no tracked run is missing its metrics.
            history = checkpoint.load(final_path)["history"].tolist()
            tracker.log_metrics(state["parent_run_id"], [(i + 1, {"train/loss": v}) for i, v in enumerate(history)])
    parent = state["parent_run_id"]
    if tracker.resend_spilled():
        log("[harness] sent the metrics an earlier run of this directory could not send")
    if "pretrain" in stages:
        # A resumed (requeued, re-submitted) pretraining records where it runs now; an eval
        # stage leaves the parent's tags alone (its own run has its job id).
        tracker.set_tags(parent, {"harness.slurm_job_id": identity["harness.slurm_job_id"], "harness.world_size": world,
                                  "harness.per_process_batch": identity["harness.per_process_batch"],
                                  **{k: str(v) for k, v in req.tags.items()}})
    log(f"[harness] output: {out_dir}\n[harness] mlflow run {parent} at {tracker.uri}")

    with tracker.running(parent):
        if "pretrain" in stages or not final_path.exists():
            method = _pretrain(cfg, method_cls, suite, out_dir, device, deterministic, tracker, parent, log)
        else:
            method = method_cls(cfg).to(device)
        results = {}
        if run_evals:
            final_state = checkpoint.load(final_path)
            for name in run_evals:
                results[name] = _evaluate(name, cfg, method, final_state, suite, out_dir, device, deterministic,
                                          tracker, parent, identity, log)
    _write_results(out_dir, evals, cfg)
    for name, m in results.items():
        log(f"[harness] {req.method} {name} ({cfg[f'eval.{name}.preset']}): top1 {m['top1']:.2f}%  top5 {m['top5']:.2f}%")
    return results


def _deterministic(cfg: Config) -> bool:
    det = cfg["train.deterministic"]
    return pick_device(cfg).type == "cpu" if det is None else bool(det)


def _write_results(out_dir: Path, evals: list[str], cfg: Config) -> None:
    """results.json from every finished stage on disk, so stages run as separate jobs add up
    to the same file as one job running them all."""
    results = {}
    for name in evals:
        done = _read_json(out_dir / "evals" / name / "metrics.json")
        if done is not None:
            results[name] = done["metrics"]
    final = out_dir / "pretrain" / "method.pt"
    history = checkpoint.load(final)["history"].tolist() if final.exists() else []
    _write_json(out_dir / "results.json", {"results": results, "pretrain_loss": history, "config_hash": cfg.hash})


def _pretrain(cfg, method_cls, suite, out_dir, device, deterministic, tracker, parent, log):
    """Pretrain (or resume, or reuse the finished result); returns the method on ``device``."""
    from harness.data.loading import SeededTransformDataset
    from harness.trainer import CheckpointHook, MetricsHook, ProgressHook, Trainer

    seed = int(cfg["seed"])
    seed_everything(seed, deterministic)
    method = method_cls(cfg)
    method.num_features  # an unreadable backbone.probe_layer fails now, not after pretraining
    ckpt_dir = out_dir / "checkpoints"
    final = out_dir / "pretrain" / "method.pt"
    if final.exists():
        log("[harness] pretraining already finished: using its final weights")
        return method.to(device)
    dataset = SeededTransformDataset(suite.pretrain_split() if method.uses_unlabeled else suite.split("train"), method.train_transform(), derive_seed(seed, 0),
                                     with_index=method.needs_index)
    # Every process checkpoints (saving gathers their RNG states); only rank 0 shows and tracks.
    hooks = [CheckpointHook(cfg["train.checkpoint_every"])]
    if tracker is not None:
        hooks = [ProgressHook(f"pretrain {cfg['method.name']}"), *hooks,
                 MetricsHook(lambda rows: tracker.log_metrics(parent, rows), cfg["train.log_every"])]
    trainer = Trainer(method, dataset, cfg.section("train"), seed, ckpt_dir, device, hooks=hooks,
                      num_workers=int(cfg["data.num_workers"]))
    if checkpoint.latest(ckpt_dir):
        log(f"[harness] resuming pretraining from {checkpoint.latest(ckpt_dir)}")
    trainer.fit()
    if tracker is None:
        return method
    if trainer.resumed_from is not None:
        tracker.set_tags(parent, {"harness.resumed_from_step": trainer.resumed_from})
    backbone_path = out_dir / "pretrain" / "backbone.pt"
    checkpoint.save_atomic(method.backbone.state_dict(), backbone_path)
    tracker.log_artifact(parent, out_dir / "config.yaml")
    tracker.log_artifact(parent, backbone_path)
    if trainer.history:
        curve = loss_curve(trainer.history, out_dir / "pretrain" / "loss.png",
                           f"{cfg['method.name']} / {cfg['backbone.name']} / {cfg['suite.name']}, seed {seed}",
                           trainer.steps_per_epoch)
        tracker.log_artifact(parent, curve)
    if hasattr(method, "reconstruct"):
        grid = _reconstruction_grid(method, dataset, device, out_dir / "pretrain" / "reconstructions.png")
        tracker.log_artifact(parent, grid)
    # Written last: its existence marks the stage finished, so a kill before it redoes the
    # (idempotent) steps above rather than skipping them.
    checkpoint.save_atomic({"method": method.state_dict(), "history": torch.tensor(trainer.history, dtype=torch.float64)}, final)
    (ckpt_dir / checkpoint.LAST).unlink(missing_ok=True)  # the final weights supersede it
    return method


def _evaluate(name, cfg, method, final_state, suite, out_dir, device, deterministic, tracker, parent, identity, log):
    """Run eval ``name`` once per run directory; a finished one is read back from disk."""
    ev_cls = registry.evals.get(name)
    ev = ev_cls(cfg)
    metrics_path = out_dir / "evals" / name / "metrics.json"
    cached = _read_json(metrics_path)
    # The child run id lives beside the eval's output, not in a file shared by all evals:
    # evals may run as concurrent jobs.
    run_file = metrics_path.parent / "run.json"
    child = (_read_json(run_file) or {}).get("run_id")
    if not tracker.run_exists(child):
        child = tracker.create_run(
            f"{name}/{ev.preset}", {**identity, "harness.stage": "eval", "harness.eval": name,
                                    "harness.protocol": ev_cls.protocol, "harness.preset": ev.preset},
            cfg.section(f"eval.{name}"), parent_id=parent)
        _write_json(run_file, {"run_id": child})
        if cached is not None:  # finished before, tracked elsewhere: track the result here too
            tracker.log_metrics(child, [(0, cached["metrics"])])
            tracker.finish(child)
    if cached is not None:
        log(f"[harness] eval '{name}' already finished: cached")
        return cached["metrics"]
    # Fresh weights and a seed of the eval's own: no eval depends on which ran before it.
    method.load_state_dict(final_state["method"])
    method.to(device)
    seed_everything(derive_seed(int(cfg["seed"]), 100, zlib.crc32(name.encode())), deterministic)
    log(f"[harness] eval '{name}' (preset {ev.preset})")
    with tracker.running(child):
        metrics = ev.run(method, suite, device, metrics_path.parent)
        tracker.log_metrics(child, [(0, metrics)])
    _write_json(metrics_path, {"metrics": metrics, "protocol": ev_cls.protocol, "preset": ev.preset, "config_hash": cfg.hash})
    return metrics


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

"""One run: resolve and check the config -> pretrain (resumable) -> each eval (cached) -> tracking.

Everything the user can get wrong is checked in ``build_config``, before a run folder or an
MLflow run exists. A stage is a pure function of its config and inputs and leaves its result
in the run folder (``harness.rundir``): re-running the same command resumes pretraining from
the last checkpoint and skips every eval that already finished.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import registry, stages, tags
from harness.config import HARNESS_RULES, Config, check, method_layers, resolve
from harness.context import RunContext, deterministic, identity_tags, pick_device
from harness.data.base import DEFAULT_SUITE, describe_data
from harness.errors import UsageError
from harness.metrics import Declaration
from harness.rundir import PRETRAIN, RunFolder, eval_stage


@dataclass
class RunRequest:
    method: str
    suite: str = DEFAULT_SUITE
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
    # False: nothing goes to MLflow (tuning sweeps, bench/sweep.py); the run folder is the same.
    track: bool = True


def default_output_dir(req: RunRequest, cfg: Config) -> Path:
    return (Path("runs") / f"{req.method}-{cfg['backbone.name']}-{req.suite}-s{cfg['seed']}-{cfg.hash[:8]}").resolve()


def run_folder(req: RunRequest, cfg: Config) -> RunFolder:
    return RunFolder(req.output_dir if req.output_dir else default_output_dir(req, cfg))


def eval_names(spec: str, suite_cls, overrides: dict | None = None) -> list[str]:
    """The evals ``spec`` names ('all': every registered eval whose data the suite provides).
    An eval named explicitly may instead read data of its own from ``eval.<name>.data_root``
    (detection on VOC after pretraining on ImageNet); that eval checks the root itself."""
    known = registry.evals.names()
    provided = tuple(getattr(suite_cls, "provides", ()))
    missing = {n: [k for k in registry.evals.get(n).needs if k not in provided] for n in known}
    if spec.strip() == "all":
        return [e for e in known if not missing[e]]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in known:
            raise UsageError(f"unknown eval '{n}'; known evals: {', '.join(known)} (or 'all')")
        if missing[n] and not (overrides or {}).get(f"eval.{n}.data_root"):
            offers = ", ".join(describe_data(k) for k in provided) or "nothing"
            raise UsageError(f"eval '{n}' needs {', '.join(describe_data(k) for k in missing[n])}, which suite "
                             f"'{suite_cls.name}' does not provide (it provides: {offers})")
    return names


def build_config(req: RunRequest) -> tuple[Config, type, type, list[str]]:
    """The resolved config, the method and suite classes and the evals to run; every value
    checked, so nothing past this point fails on what the user typed."""
    method_cls = registry.methods.get(req.method)
    suite_cls = registry.suites.get(req.suite)
    evals = eval_names(req.evals, suite_cls, dict(req.overrides))
    overrides = dict(req.overrides)
    for key, value in (("backbone.name", req.backbone), ("seed", req.seed), ("train.epochs", req.epochs)):
        if value is not None:
            overrides[key] = value
    overrides["method.name"] = req.method
    overrides["suite.name"] = req.suite
    recipe = overrides.get("method.recipe", "default")
    layers_of_method = method_layers(method_cls, recipe, suite_cls)
    layers = []
    # Every registered eval contributes its keys (so overrides of any eval are checked);
    # a preset chosen by the suite or the user selects which published values apply.
    for name in registry.evals.names():
        ev = registry.evals.get(name)
        chosen = overrides.get(f"eval.{name}.preset") or suite_cls.profile.get(f"eval.{name}.preset")
        layers.append((f"{name} eval preset", ev.config_layer(chosen)))
    layers += layers_of_method[:1]
    layers.append((f"suite '{req.suite}' profile", suite_cls.profile))
    layers += layers_of_method[1:]
    cfg = resolve(layers, overrides)
    check(cfg, HARNESS_RULES)
    for name in evals:
        ev_cls = registry.evals.get(name)
        Declaration.of(ev_cls)  # an eval without metric declarations fails now, not after pretraining
        ev_cls.check_config(cfg)
    _check_method(method_cls, cfg)
    return cfg, method_cls, suite_cls, evals


def _check_method(method_cls, cfg: Config) -> None:
    """Builds the method once, off the record (its random draws do not touch the run's
    generators), so a backbone option or read-out layer the method cannot take fails here."""
    with torch.random.fork_rng(devices=[]):
        try:
            method_cls(cfg).num_features
        except UsageError:
            raise
        except Exception as e:  # a config the method's constructor cannot build
            raise UsageError(f"method '{cfg['method.name']}' cannot be built with this config: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def rerun_args(req: RunRequest, cfg: Config, out_dir: Path, evals: list[str]) -> list[str]:
    args = ["run", "--method", req.method, "--suite", req.suite, "--backbone", cfg["backbone.name"],
            "--eval", ",".join(evals), "--seed", str(cfg["seed"]), "--epochs", str(cfg["train.epochs"]),
            "--output-dir", str(out_dir)]
    skip = {"backbone.name", "seed", "train.epochs", "method.name", "suite.name"}
    return args + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(req.overrides.items()) if k not in skip]


def _prepare_suite(suite_cls, cfg: Config, main: bool, log):
    """The suite with its data on disk; rank 0 makes it, the other processes then read it."""
    from harness import ddp

    suite = suite_cls(root=cfg["suite.root"], image_size=cfg["data.image_size"])
    suite.train_subset = int(cfg["data.train_subset"])
    log(f"[harness] suite '{cfg['suite.name']}': preparing data")
    if main:
        suite.prepare()
    ddp.barrier()
    if not main:
        suite.prepare()
    return suite


def execute(req: RunRequest, log=print) -> dict[str, dict[str, float]]:
    from harness import ddp
    from harness.tracking import NullTracker, Tracker, check_reachable, default_tracking_uri

    cfg, method_cls, suite_cls, evals = build_config(req)
    main = ddp.is_main()
    wanted = req.stages or (PRETRAIN, *(eval_stage(e) for e in evals))
    run_evals = [e for e in evals if eval_stage(e) in wanted]
    if not main:
        log = lambda *a, **k: None  # noqa: E731  only rank 0 speaks and tracks
    device, det = pick_device(cfg), deterministic(cfg)
    uri = req.tracking_uri or default_tracking_uri()
    if main and req.track:
        check_reachable(uri)  # an unreachable server fails here, before any output
    # Data first: a missing dataset fails before anything is written or tracked.
    suite = _prepare_suite(suite_cls, cfg, main, log)
    folder = run_folder(req, cfg)
    folder.check_config(cfg.hash)
    ctx = RunContext(cfg=cfg, method_cls=method_cls, suite=suite, folder=folder, tracker=NullTracker(), device=device,
                     deterministic=det, log=log, main=main)
    if not main:
        stages.pretrain(ctx)
        return {}
    # An eval stage whose pretraining is missing pretrains first, so it holds that stage too.
    held = [*wanted, *([PRETRAIN] if PRETRAIN not in wanted and not folder.stage_done(PRETRAIN) else [])]
    command = " ".join(["harness", *req.argv]) if req.argv else f"harness run --method {req.method}"
    # A second identical command stops here (exit 2, naming the holder), before it writes or tracks.
    with folder.lock_stages(held, command):
        if req.track:
            ctx.tracker = Tracker(uri)
        ctx.tracker.spill_path = folder.unsent_metrics
        folder.write_config(cfg)
        ctx.identity = identity_tags(cfg, method=req.method, suite=req.suite, folder=folder, device=device,
                                     deterministic=det, data_hash=suite.content_hash(),
                                     command=rerun_args(req, cfg, folder.root, evals), invocation=req.argv,
                                     extra=req.tags, method_cls=ctx.method_cls)
        results = _run_stages(ctx, req, wanted, run_evals)
        written = folder.write_results(evals, cfg.hash)
    for name, m in results.items():
        decl = Declaration.from_dict(written["declarations"].get(name)) or Declaration.of(registry.evals.get(name))
        done = folder.eval_result(name) or {}
        label = done.get("preset") or registry.evals.get(name).preset_label(cfg)
        log(f"[harness] {req.method} {name} ({label}): {decl.summary(m)}")
    return results


def _run_stages(ctx: RunContext, req: RunRequest, wanted, run_evals: list[str]) -> dict:
    cfg, folder, tracker = ctx.cfg, ctx.folder, ctx.tracker
    ctx.parent = stages.ensure_parent_run(ctx, f"{req.method}/{cfg['backbone.name']}/{req.suite}/s{ctx.seed}")
    if tracker.resend_spilled():
        ctx.log("[harness] sent the metrics an earlier run of this directory could not send")
    if PRETRAIN in wanted:
        # A resumed (requeued, re-submitted) pretraining records where it runs now; an eval
        # stage leaves the parent's tags alone (its own run has its job id).
        tracker.set_tags(ctx.parent, {k: ctx.identity[k] for k in (tags.SLURM_JOB_ID, tags.WORLD_SIZE,
                                                                   tags.PER_PROCESS_BATCH)}
                         | {k: str(v) for k, v in req.tags.items()})
    ctx.log(f"[harness] output: {folder.root}\n[harness] mlflow run {ctx.parent} at {tracker.uri}")
    results = {}
    with tracker.running(ctx.parent):
        if PRETRAIN in wanted or not folder.stage_done(PRETRAIN):
            method = stages.pretrain(ctx)
        else:
            method = ctx.method_cls(cfg).to(ctx.device)  # the evals load the final weights into it
        if run_evals:
            from harness import checkpoint

            final_state = checkpoint.load(folder.final_weights)
            for name in run_evals:
                results[name] = stages.evaluate(ctx, name, method, final_state)
    return results

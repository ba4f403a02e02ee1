"""Command line: ``harness run | sweep | status | list | leaderboard build``.

Bad input (unknown names, malformed overrides, missing data) ends with one line on stderr
and exit code 2; nothing here touches the network or imports torch before it is needed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import registry
from harness.data.base import DEFAULT_SUITE
from harness.errors import RunFailed, RunsFailed, UsageError

DEFAULT_JOBS_DIR = Path("runs") / "jobs"


def _launch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launching (submitit)")
    g.add_argument("--launcher", default="inprocess", choices=["inprocess", "local", "slurm"],
                   help="inprocess (default): here and now; local: a background job on this machine "
                        "(several --tasks-per-node give DDP); slurm: sbatch through submitit")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--time", type=int, dest="time_min", help="time limit in minutes (default 1440)")
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", type=int)
    g.add_argument("--tasks-per-node", type=int, help="processes per node (default: one per GPU, else 1)")
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--mem-gb", type=float)
    g.add_argument("--constraint")
    g.add_argument("--exclude")
    g.add_argument("--signal-delay", type=int, dest="signal_delay_s",
                   help="seconds before the time limit at which Slurm sends USR2 (checkpoint and requeue; default 120)")
    g.add_argument("--max-requeues", type=int, help="timeouts after which a job is not requeued again (default 3)")
    g.add_argument("--jobs-dir", help=f"job logs and the job list (default {DEFAULT_JOBS_DIR})")
    g.add_argument("--launch-config", help="YAML file of launch defaults (e.g. partition: gpu, account: A, "
                                           "time: 2880); the flags above override it")
    g.add_argument("--no-snapshot", action="store_true", help="Slurm jobs run the live checkout, not a snapshot of it")
    g.add_argument("--wait", action="store_true", help="wait for submitted jobs and print their results "
                                                       "(always on for --launcher local)")


# Launch option names in a --launch-config file (the flags' spelling) -> LaunchOptions fields.
_LAUNCH_KEYS = {"partition": "partition", "account": "account", "qos": "qos", "time": "time_min", "nodes": "nodes",
                "gpus_per_node": "gpus_per_node", "tasks_per_node": "tasks_per_node", "cpus_per_task": "cpus_per_task",
                "mem_gb": "mem_gb", "constraint": "constraint", "exclude": "exclude", "signal_delay": "signal_delay_s",
                "max_requeues": "max_requeues", "jobs_dir": "jobs_dir"}


def _launch_config(path: str | None) -> dict:
    if not path:
        return {}
    import difflib

    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise UsageError(f"--launch-config {path}: cannot read it ({e.strerror})")
    except yaml.YAMLError as e:
        raise UsageError(f"--launch-config {path}: not valid YAML ({str(e).splitlines()[0]})")
    if not isinstance(data, dict):
        raise UsageError(f"--launch-config {path}: expected a mapping of launch options, e.g. 'partition: gpu'")
    out = {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        if k not in _LAUNCH_KEYS:
            close = difflib.get_close_matches(k, list(_LAUNCH_KEYS), n=3)
            raise UsageError(f"--launch-config {path}: unknown option '{key}'"
                             + (f" (did you mean {', '.join(close)}?)" if close else f"; known: {', '.join(_LAUNCH_KEYS)}"))
        out[_LAUNCH_KEYS[k]] = value
    return out


def _launch_options(args):
    from harness.launch import LaunchOptions

    values = _launch_config(args.launch_config)
    for field in set(_LAUNCH_KEYS.values()):
        if getattr(args, field, None) is not None:
            values[field] = getattr(args, field)
    if "jobs_dir" in values:
        values["jobs_dir"] = Path(values["jobs_dir"])
    return LaunchOptions(launcher=args.launcher, snapshot=not args.no_snapshot,
                         wait=args.wait or args.launcher == "local", **values)


def _print_results(results: dict) -> None:
    from harness.metrics import Declaration

    for name, m in (results or {}).items():
        print(f"[harness] {name}: {Declaration.of(registry.evals.get(name)).summary(m)}")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, like every other input error, instead of argparse's usage block.
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="Reproducible self-supervised learning benchmarks.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="pretrain a method and evaluate it",
                         description="Pretrain --method on --suite, run --eval, track everything in MLflow. "
                                     "Extra key=value arguments override any config key (see --print-config).")
    run.add_argument("--method", required=True, help="method name (see `harness list methods`)")
    run.add_argument("--backbone", help="backbone name (default: the recipe's, adapted to the suite)")
    run.add_argument("--suite", default=DEFAULT_SUITE,
                     help=f"benchmark suite (default: {DEFAULT_SUITE}, embedded, needs no download)")
    run.add_argument("--eval", default="all", dest="evals", help="comma list of evals, or 'all' (default)")
    run.add_argument("--seed", type=int, help="run seed (default 0)")
    run.add_argument("--epochs", type=int, help="pretraining epochs (0 evaluates the random initialisation)")
    run.add_argument("--output-dir", help="run directory (default runs/<method>-<backbone>-<suite>-s<seed>-<hash>); "
                                          "re-running into it resumes")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db or $MLFLOW_TRACKING_URI)")
    run.add_argument("--print-config", action="store_true", help="print the resolved config with sources and exit")
    _launch_args(run)
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.05")

    sw = sub.add_parser("sweep", help="a grid of runs (methods x backbones x widths x seeds), one Slurm job array",
                        description="Every combination of the lists, tagged with one sweep id. With --launcher slurm "
                                    "the grid is submitted as one job array.")
    sw.add_argument("--methods", required=True, help="comma list of methods")
    sw.add_argument("--backbones", help="comma list of backbones (default: each method's)")
    sw.add_argument("--widths", help="comma list of width multipliers (default: each recipe's)")
    sw.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    sw.add_argument("--suite", default=DEFAULT_SUITE)
    sw.add_argument("--eval", default="all", dest="evals")
    sw.add_argument("--epochs", type=int)
    sw.add_argument("--tracking-uri")
    _launch_args(sw)
    sw.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")

    study = sub.add_parser("study", help="studies over a grid of runs, with a report")
    study_sub = study.add_subparsers(dest="study_kind", required=True)
    arch = study_sub.add_parser("arch", help="method rankings across architectures and widths (Kolesnikov et al. 2019)",
                                description="Runs every method on every backbone at every width and seed (through "
                                            "the launcher), then writes the report: mean +- std table, score-vs-width "
                                            "figure, Kendall's tau between rankings, rank reversals.")
    arch.add_argument("--methods", required=True, help="comma list of methods")
    arch.add_argument("--backbones", required=True, help="comma list of backbones")
    arch.add_argument("--widths", default="4", help="comma list of filters factors k (k/4 x the standard width; default 4)")
    arch.add_argument("--seeds", default="1,2,3", help="comma list of seeds (default 1,2,3)")
    arch.add_argument("--suite", default=DEFAULT_SUITE)
    arch.add_argument("--eval", default="linear", dest="evals", help="evals to run; the first is compared (default linear)")
    arch.add_argument("--metric", help="metric of that eval (default: its declared headline)")
    arch.add_argument("--epochs", type=int)
    arch.add_argument("--tracking-uri")
    arch.add_argument("--report-dir", help="where the report goes (default runs/studies/<study id>)")
    _launch_args(arch)
    arch.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")

    st = sub.add_parser("status", help="the harness's submitted jobs and their states")
    st.add_argument("--jobs-dir", default=str(DEFAULT_JOBS_DIR), help=f"where jobs were recorded (default {DEFAULT_JOBS_DIR})")
    st.add_argument("--sweep", help="only this sweep id")

    ls = sub.add_parser("list", help="list installed methods, backbones, evals and suites")
    ls.add_argument("kind", nargs="?", choices=sorted(registry.REGISTRIES), help="only this kind")
    ls.add_argument("--suite", default=DEFAULT_SUITE, help="backbones: parameters and FLOPs at this suite's image size "
                                                      f"(default {DEFAULT_SUITE})")

    new = sub.add_parser("new", help="write a plugin package skeleton (method, eval or backbone)",
                         description="Writes harness-NAME/: a package with an entry point, a working placeholder "
                                     "(marked TODO) and a test. `pip install -e harness-NAME` registers it.")
    new.add_argument("kind", choices=["method", "eval", "backbone"])
    new.add_argument("name", help="lower-case Python identifier, e.g. nnclr")
    new.add_argument("--dir", default=".", help="where to write it (default: the current folder)")

    data = sub.add_parser("data", help="data commands")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    mc = data_sub.add_parser("make-corruptions", help="ImageNet-C's corruptions of a suite's val split, in ImageNet-C's layout",
                             description="Corrupts every val image of --suite with the 15 + 4 ImageNet-C corruptions at "
                                         "5 severities (imagecorruptions-imaug), deterministically, after the suite's "
                                         "eval resize and crop, and writes <out>/<corruption>/<severity>/<class>/*.png "
                                         "with a content hash. Pass the folder to runs as eval.robustness.data_root "
                                         "(suites that generate their own need not).")
    mc.add_argument("--suite", default=DEFAULT_SUITE)
    mc.add_argument("--out", help="output folder (default: the suite's corruption cache under the data home)")
    mc.add_argument("--corruptions", help="comma list (default: all 19)")
    mc.add_argument("--images-per-class", type=int, default=0, help="first N val images per class (default 0: all)")
    mc.add_argument("--seed", type=int, default=0, help="generation seed (default 0, as eval.robustness.seed)")
    mc.add_argument("--workers", type=int, default=0, help="worker processes (default: one per core, at most 8)")
    mc.add_argument("--suite-root", help="where the suite's data is (suite.root)")
    mc.add_argument("overrides", nargs="*", metavar="key=value", help="suite config, e.g. data.image_size=224")

    lb = sub.add_parser("leaderboard", help="leaderboard commands")
    lb_sub = lb.add_subparsers(dest="lb_command", required=True)
    build = lb_sub.add_parser("build", help="render the static HTML leaderboard from MLflow")
    build.add_argument("--tracking-uri", help="MLflow tracking URI (default as for `run`)")
    build.add_argument("--output-dir", default="leaderboard_site", help="where to write index.html (default leaderboard_site/)")
    return p


def cmd_run(args, argv: list[str]) -> int:
    from harness.config import parse_override
    from harness.pipeline import RunRequest, build_config, execute

    overrides = dict(parse_override(o) for o in args.overrides)
    req = RunRequest(method=args.method, suite=args.suite, backbone=args.backbone, evals=args.evals, seed=args.seed,
                     epochs=args.epochs, output_dir=args.output_dir, tracking_uri=args.tracking_uri,
                     overrides=overrides, argv=argv)
    if args.print_config:
        cfg = build_config(req)[0]
        width = max(len(k) for k in cfg.values)
        for k, v in sorted(cfg.values.items()):
            print(f"{k:<{width}}  {v!r:<24}  # {cfg.sources[k]}")
        print(f"# config hash {cfg.hash}")
        return 0
    opts = _launch_options(args)
    if opts.launcher == "inprocess":
        opts.validate()
        execute(req)
        return 0
    from harness.launch import submit_run, wait

    jobs = submit_run(req, opts)
    if opts.wait and jobs:
        for res in wait(jobs):
            _print_results(res)
    return 0


def _csv(value: str | None, cast=str) -> list:
    if value is None:
        return [None]
    items = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise UsageError(f"'{value}': expected a comma list of {cast.__name__} values")


def cmd_sweep(args, argv: list[str]) -> int:
    import itertools

    from harness.config import parse_override
    from harness.launch import submit_sweep, wait_all
    from harness.pipeline import RunRequest

    overrides = dict(parse_override(o) for o in args.overrides)
    reqs = []
    for method, backbone, width, seed in itertools.product(
            _csv(args.methods), _csv(args.backbones), _csv(args.widths, float), _csv(args.seeds, int)):
        extra = dict(overrides)
        if width is not None:
            extra["backbone.width"] = int(width) if float(width).is_integer() else width
        reqs.append(RunRequest(method=method, suite=args.suite, backbone=backbone, evals=args.evals, seed=seed,
                               epochs=args.epochs, tracking_uri=args.tracking_uri, overrides=extra, argv=argv))
    sweep_id, jobs, prepared = submit_sweep(reqs, _launch_options(args))
    if jobs and (args.wait or args.launcher == "local"):
        outcomes = wait_all(jobs)
        failed = [(str(r.output_dir), why) for r, (ok, why) in zip(prepared, outcomes) if not ok]
        if failed:
            raise RunsFailed(failed, len(jobs))
        print(f"[harness] sweep {sweep_id}: {len(jobs)} runs finished")
    return 0


def cmd_study(args, argv: list[str]) -> int:
    from harness.config import parse_override
    from harness.study import run_arch_study
    from leaderboard.study_report import write_report  # the console entry point wires the layers

    overrides = dict(parse_override(o) for o in args.overrides)
    run_arch_study(_csv(args.methods), _csv(args.backbones), _csv(args.widths, float), _csv(args.seeds, int),
                   write_report=write_report, suite=args.suite, evals=args.evals, epochs=args.epochs, overrides=overrides,
                   tracking_uri=args.tracking_uri, opts=_launch_options(args), out_dir=args.report_dir,
                   metric=args.metric, argv=argv)
    return 0


def cmd_data(args) -> int:
    from harness.config import parse_override
    from harness.data.corruptions import ALL_CORRUPTIONS, check_corruptions, corrupted_sets

    if args.images_per_class < 0 or args.seed < 0 or args.workers < 0:
        raise UsageError("--images-per-class, --seed and --workers must be >= 0")
    corruptions = check_corruptions(_csv(args.corruptions) if args.corruptions else ALL_CORRUPTIONS)
    overrides = dict(parse_override(o) for o in args.overrides)
    unknown = sorted(set(overrides) - {"data.image_size", "data.eval_resize_ratio"})
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)}; expected data.image_size or data.eval_resize_ratio")
    suite_cls = registry.suites.get(args.suite)
    size = int(overrides.get("data.image_size", suite_cls.profile.get("data.image_size", 224)))
    ratio = float(overrides.get("data.eval_resize_ratio", suite_cls.profile.get("data.eval_resize_ratio", 256 / 224)))
    suite = suite_cls(root=args.suite_root, image_size=size)
    sets = corrupted_sets(suite, corruptions, images_per_class=args.images_per_class, seed=args.seed,
                          workers=args.workers, resize_ratio=ratio, out=Path(args.out) if args.out else None,
                          make=True)
    print(f"[harness] {len(corruptions)} corruption(s) x 5 severities of suite '{args.suite}' in {sets.root}")
    print(f"[harness] content hash {sets.content_hash}")
    return 0


def cmd_status(args) -> int:
    from harness.launch import job_states

    rows = job_states(Path(args.jobs_dir), args.sweep)
    if not rows:
        print(f"no jobs recorded in {args.jobs_dir}" + (f" for sweep {args.sweep}" if args.sweep else ""))
        return 0
    header = ("job", "state", "method", "seed", "stage", "sweep", "submitted", "log")
    table = [(r["job_id"], r["state"], r["method"], str(r["seed"]), r["stage"], r.get("sweep_id") or "-",
              r["submitted"], r["stdout"]) for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    for line in (header, *table):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    return 0


def cmd_list(args) -> int:
    kinds = [args.kind] if args.kind else list(registry.REGISTRIES)
    for kind in kinds:
        reg = registry.REGISTRIES[kind]
        names = reg.names()
        width = max((len(n) for n in names), default=0)
        if kind == "backbones" and args.kind == "backbones":
            _list_backbones(names, width, args.suite)
            continue
        print(f"{kind}:")
        for name in names:
            print(f"  {name:<{width}}  {reg.describe(name)}")
            if kind == "evals":
                print(f"  {'':<{width}}  {_eval_contract(reg.get(name))}")
    return 0


def _eval_contract(ev) -> str:
    """What an eval reports (headline first, with directions) and the data it needs."""
    from harness.data.base import describe_data
    from harness.metrics import Declaration

    decl = Declaration.of(ev)
    order = [decl.headline_metric] + [m for m in decl.metrics if m.name != decl.headline]
    reports = ", ".join(f"{m.name} {'↑' if m.higher_is_better else '↓'}" + (" (headline)" if m.name == decl.headline else "")
                        for m in order)
    return f"reports {reports}; needs {', '.join(describe_data(k) for k in ev.needs)}"


def _list_backbones(names: list[str], width: int, suite: str) -> None:
    """Each backbone with its parameter count and forward FLOPs at the suite's image size."""
    from harness.backbones import cost

    size = int(registry.suites.get(suite).profile.get("data.image_size", 224))
    print(f"backbones (parameters, forward GFLOPs per {size}x{size} image, suite '{suite}'; "
          f"<name>_x<k> gives the Revisiting width k, e.g. resnet50_v2_x16):")
    for name in names:
        try:
            n_params, flops = cost(name, size)
            stats = f"{n_params / 1e6:8.2f} M  {flops / 1e9:8.3f} GFLOPs"
        except Exception as e:  # a third-party backbone that cannot run at this size still lists
            stats = f"{'?':>10}  {'?':>14}  ({type(e).__name__})"
        print(f"  {name:<{width}}  {stats}  {registry.backbones.describe(name)}")


def cmd_leaderboard(args) -> int:
    from harness.tracking import default_tracking_uri
    from leaderboard.render import build

    uri = args.tracking_uri or default_tracking_uri()
    path = build(uri, Path(args.output_dir))
    print(f"leaderboard written to {path.resolve()}")
    print(f"open it with: python -m webbrowser file://{path.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    # argparse stops filling a nargs="*" positional at the first option, so
    # `harness run --method m a=1 --eval knn b=2` would reject b=2; gather such overrides here.
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if "=" in a and not a.startswith("-")]
    if late and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *late]
        extra = [a for a in extra if a not in late]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "sweep":
            return cmd_sweep(args, argv)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "study":
            return cmd_study(args, argv)
        if args.command == "data":
            return cmd_data(args)
        if args.command == "new":
            from harness.scaffold import new_plugin

            root = new_plugin(args.kind, args.name, Path(args.dir))
            print(f"[harness] wrote {root}; next: pip install -e {root} && harness list {args.kind}s && "
                  f"pytest {root}")
            return 0
        return cmd_leaderboard(args)
    except UsageError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:  # RunsFailed too
        print(f"harness: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("harness: interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

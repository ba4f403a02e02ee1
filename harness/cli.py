"""Command line: ``harness run | list | leaderboard build``.

Bad input (unknown names, malformed overrides, missing data) ends with one line on stderr
and exit code 2; nothing here touches the network or imports torch before it is needed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import registry
from harness.errors import UsageError


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
    run.add_argument("--suite", default="digits", help="benchmark suite (default: digits, embedded, needs no download)")
    run.add_argument("--eval", default="all", dest="evals", help="comma list of evals, or 'all' (default)")
    run.add_argument("--seed", type=int, help="run seed (default 0)")
    run.add_argument("--epochs", type=int, help="pretraining epochs (0 evaluates the random initialisation)")
    run.add_argument("--output-dir", help="run directory (default runs/<method>-<backbone>-<suite>-s<seed>-<hash>); "
                                          "re-running into it resumes")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db or $MLFLOW_TRACKING_URI)")
    run.add_argument("--print-config", action="store_true", help="print the resolved config with sources and exit")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.05")

    ls = sub.add_parser("list", help="list installed methods, backbones, evals and suites")
    ls.add_argument("kind", nargs="?", choices=sorted(registry.REGISTRIES), help="only this kind")

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
    execute(req)
    return 0


def cmd_list(args) -> int:
    kinds = [args.kind] if args.kind else list(registry.REGISTRIES)
    for kind in kinds:
        reg = registry.REGISTRIES[kind]
        print(f"{kind}:")
        names = reg.names()
        width = max((len(n) for n in names), default=0)
        for name in names:
            print(f"  {name:<{width}}  {reg.describe(name)}")
    return 0


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
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "list":
            return cmd_list(args)
        return cmd_leaderboard(args)
    except UsageError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

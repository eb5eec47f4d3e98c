"""`python -m mtl_core reproduce --list | NAME [--full]`: the paper checks on the command line.

The result is also saved in RUNS_DIR/paper_checks/NAME.json for the Paper checks page.
Exit status: 0 the claim holds, 1 it does not, 2 bad input or a check that cannot run here
(e.g. MNIST absent), with the reason on stderr.
"""
from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from mtl_core.reproduce import CHECKS

    p = sub.add_parser("reproduce", parents=[common],
                       help="paper checks: a published figure next to the one measured here",
                       description="Run a paper check and print the published figure, the "
                                   "measured one, a verdict and the source. Checks: "
                                   + ", ".join(CHECKS))
    p.add_argument("name", nargs="?", metavar="NAME", help="the check to run")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("--full", action="store_true",
                   help="the published setting (large budgets: for a GPU)")
    p.add_argument("--short", action="store_true",
                   help="a seconds-long smoke run (its verdict means little)")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mtl_core.cli import _runs_dir
    from mtl_core.reproduce import CHECKS, CheckUnavailable, report, save_result

    if args.list:
        for check in CHECKS.values():
            print(f"{check.name:24s} {check.title}  [{check.source}]")
        return 0
    if not args.name:
        print("error: reproduce: give a check NAME or --list; allowed: "
              + ", ".join(CHECKS), file=sys.stderr)
        return 2
    if args.name not in CHECKS:
        print(f"error: reproduce: unknown check {args.name!r}; allowed: {', '.join(CHECKS)}",
              file=sys.stderr)
        return 2
    if args.full and args.short:
        print("error: reproduce: --full and --short exclude each other", file=sys.stderr)
        return 2
    check = CHECKS[args.name]
    size = "full" if args.full else "short" if args.short else "default"
    runs_dir = _runs_dir(args)
    try:
        measurement = check.run(size)
    except CheckUnavailable as exc:
        save_result(runs_dir, check.name, size, None, error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_result(runs_dir, check.name, size, measurement)  # what the Paper checks page shows
    print(report(check, measurement))
    return 0 if measurement.verdict == "holds" else 1

"""`alertstream bench`: the benchmark runner as a subcommand of the alertstream CLI.

cli/main.py wires it in with two lines:

    from benchmarks.cli import add_parser as add_bench_parser   # at the top
    add_bench_parser(sub)                                       # in build_parser()
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add `bench` to the CLI's subparsers; its handler runs benchmarks.runner with the same options."""
    from benchmarks.runner import __doc__ as doc
    from benchmarks.runner import add_arguments

    p = sub.add_parser("bench", help="benchmark: throughput, latency, lag, CPU and RSS vs the broker and COPY ceilings",
                       description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args: argparse.Namespace, settings: Any) -> int:
    from benchmarks.runner import run_from_args

    return run_from_args(args, "alertstream " + shlex.join(sys.argv[1:]))

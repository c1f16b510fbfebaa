"""`alertstream` command line: a thin layer over the modules that do the work."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from streams.settings import Settings, settings_table


def _cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from streams import localstack

    if args.action == "up":
        env = localstack.up(settings)
        print(localstack.export_lines(env))
    elif args.action == "down":
        stopped = localstack.down()
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
    else:
        for s in localstack.status():
            state = "external" if s.external else ("running" if s.alive else "stopped")
            print(f"{s.name:10} {state:9} pid={s.pid or '-':<8} {s.endpoint or ''}")
    return 0


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.migrate import migrate

    applied = asyncio.run(migrate(settings.require_database_url()))
    print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}", file=sys.stderr)
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from streams.app import create_app
    from streams.topics import ensure_topics

    ensure_topics(settings)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower())
    worker.execute_from_commandline()  # handles SIGTERM/SIGINT: agents stop, offsets are committed
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import produce_demo

    stats = produce_demo(settings)
    print(f"produced {stats.records} records ({stats.alerts} alerts, {stats.malformed} malformed)", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import run_local

    return run_local(settings, stay=not args.exit_after_demo)


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    print(settings_table())
    return 0


def _cmd_topology(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import describe

    print(describe(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alertstream", description="Alert ingestion on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)
    stack = sub.add_parser("stack", help="the embedded local stack: broker, Postgres, search store")
    stack.add_argument("action", choices=["up", "status", "down"])
    stack.set_defaults(func=_cmd_stack)
    sub.add_parser("migrate", help="create or upgrade the Postgres schema").set_defaults(func=_cmd_migrate)
    sub.add_parser("worker", help="run the stream worker (Faust)").set_defaults(func=_cmd_worker)
    sub.add_parser("demo", help="produce the demo stream to the input topic").set_defaults(func=_cmd_demo)
    run = sub.add_parser("run", help="stack up, migrate, worker, demo stream and a live summary")
    run.add_argument("--exit-after-demo", action="store_true", help="stop everything once the demo is processed")
    run.set_defaults(func=_cmd_run)
    sub.add_parser("config", help="print every setting with its default and meaning").set_defaults(func=_cmd_config)
    sub.add_parser("topology", help="print the stream topology").set_defaults(func=_cmd_topology)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    if args.command != "worker":  # the Faust worker sets up its own logging
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())

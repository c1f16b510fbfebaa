"""`alertstream` command line: a thin layer over the modules that do the work."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys

from config.settings import Settings, settings_table


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
            print(f"{s.name:10} {s.engine or '':13} {state:9} pid={s.pid or '-':<8} {s.endpoint or ''}")
    return 0


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.migrate import migrate

    applied = asyncio.run(migrate(settings.require_database_url()))
    print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}", file=sys.stderr)
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from streams import stall_watchdog
    from streams.app import create_app
    from streams.supervisor import Supervisor, die_with_parent, resolve_worker_processes, young_gc_every
    from streams.topics import ensure_topics

    if not args.child:
        ensure_topics(settings)
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return Supervisor(settings, resolve_worker_processes(settings)).run()
    die_with_parent()
    young_gc_every(settings.gc_gen0_threshold)
    app = create_app(settings)
    gc.freeze()  # what startup built lives as long as the process: no collection walks it again
    worker = faust.Worker(app, loglevel=settings.log_level.lower())
    try:
        worker.execute_from_commandline()  # handles SIGTERM/SIGINT: agents stop, offsets are committed
    finally:
        if stall_watchdog.requested:  # stopped to be replaced (streams/stall_watchdog.py): say so to the supervisor
            os._exit(stall_watchdog.EXIT_STALLED)
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import produce_demo

    stats = produce_demo(settings)
    print(f"produced {stats.records} records ({stats.alerts} alerts, {stats.malformed} malformed)", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import run_local

    return run_local(settings, stay=not args.exit_after_demo)


def _cmd_dedup_suggest(args: argparse.Namespace, settings: Settings) -> int:
    """Read the input topic (a throwaway group, nothing committed) and propose ignore rules."""
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from core.errors import PROVIDER, TENANT
    from schemas.adaptive import AdaptiveLearner, to_rules_yaml
    from schemas.rules import load_rules

    rules = load_rules(settings.fingerprint_rules_path)
    learner = AdaptiveLearner(rules)
    consumer = Consumer({"bootstrap.servers": settings.require_kafka(), "group.id": f"suggest-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    # assign every partition from the start: no group join (slow on some brokers), nothing committed
    partitions = consumer.list_topics(settings.topic_alerts, timeout=10).topics[settings.topic_alerts].partitions
    consumer.assign([TopicPartition(settings.topic_alerts, p, OFFSET_BEGINNING) for p in partitions])
    seen = idle = 0
    try:
        while seen < args.records and idle < args.idle_s:
            messages = consumer.consume(num_messages=1000, timeout=1.0)
            idle = 0 if messages else idle + 1
            for m in messages:
                if m.error() or not m.value():
                    continue
                headers = {k: v.decode(errors="replace") for k, v in (m.headers() or []) if v is not None}
                learner.observe_record(headers.get(PROVIDER), headers.get(TENANT) or settings.default_tenant, m.value())
                seen += 1
    finally:
        consumer.close()
    suggestions = learner.suggestions(min_identities=args.min_identities, min_change_ratio=args.min_change_ratio)
    print(f"# read {seen} records from {settings.topic_alerts}", file=sys.stderr)
    for s in suggestions:
        print(f"# {s.tenant}/{s.provider}: ignore {s.field} (changes in {s.change_ratio:.0%} of {s.identities} identities)",
              file=sys.stderr)
    if not suggestions:
        print("# no field varies within alert identities: nothing to suggest", file=sys.stderr)
        return 0
    print(to_rules_yaml(suggestions, rules))  # the rules file with the suggestions applied
    return 0


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.update:
        from config.reference import update_settings_block  # grouped by area, docs/configuration.md

        update_settings_block(args.update)
        print(f"updated the settings table in {args.update}", file=sys.stderr)
    else:
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
    worker = sub.add_parser("worker", help="run the stream worker: a supervisor and one Faust process per CPU core (ALERTSTREAM_WORKER_PROCESSES)")
    worker.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one Faust process, started by the supervisor
    worker.set_defaults(func=_cmd_worker)
    sub.add_parser("demo", help="produce the demo stream to the input topic").set_defaults(func=_cmd_demo)
    run = sub.add_parser("run", help="stack up, migrate, worker, demo stream and a live summary (progress lines "
                                     "without a terminal); Ctrl-C stops all, in order, exit 0")
    run.add_argument("--exit-after-demo", action="store_true", help="stop everything once the demo is processed")
    run.set_defaults(func=_cmd_run)
    dedup = sub.add_parser("dedup", help="deduplication tools").add_subparsers(dest="dedup_command", required=True)
    suggest = dedup.add_parser("suggest", help="learn which fields vary within alert identities; print the rules file that ignores them")
    suggest.add_argument("--records", type=int, default=100_000, help="read at most this many input records")
    suggest.add_argument("--idle-s", type=int, default=5, help="stop after this many seconds without records")
    suggest.add_argument("--min-identities", type=int, default=3)
    suggest.add_argument("--min-change-ratio", type=float, default=0.5)
    suggest.set_defaults(func=_cmd_dedup_suggest)
    from benchmarks.cli import add_parser as add_bench
    from gateway.cli import add_parsers as add_gateway_parsers
    from sinks.archiver import add_parser as add_archive
    from sinks.cli import add_parsers as add_store_parsers
    from streams.dlq_cli import add_parser as add_dlq

    add_dlq(sub)
    add_store_parsers(sub)
    add_archive(sub)
    add_bench(sub)
    add_gateway_parsers(sub)
    config = sub.add_parser("config", help="print every setting with its default and meaning")
    config.add_argument("--update", metavar="FILE", help="rewrite the reference between the settings markers of FILE (docs/configuration.md)")
    config.set_defaults(func=_cmd_config)
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

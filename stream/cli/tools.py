"""``diffstream tail``, ``diffstream replay`` and ``diffstream check``.

    diffstream tail FILE.avro [--json] [--max N]
    diffstream tail --bootstrap-servers B [--topic alerts] [--from earliest|latest|OFFSET|TIME]
        [--json] [--bytes length|base64] [--max N] [--timeout S] [--schema-registry-url U]
    diffstream replay --bootstrap-servers B --from-topic T --output-topic O
        [--start earliest|latest|OFFSET|TIME] [--end ...] [--mode events|alerts]
        [--group-id G] [--metadata-topic M] [--dlq-topic D] [--data-root DIR]
        [--schema-registry-url U] [--metrics-port P]
    diffstream check --bootstrap-servers B [--schema-registry-url U] [--topic T ...]
    diffstream topics create --bootstrap-servers B [--partitions 45] [--retention 7d]
        [--aux-partitions 3] [--aux-retention 30d] [--replication-factor R]

Exit codes: 0 done; 1 some message could not be decoded/processed (tail, replay) or a check
failed (check); 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffstream.stream.ops.errors import EXIT_OK, ConfigError
from diffstream.stream.ops.settings import Settings

__all__ = ["register", "cmd_tail", "cmd_replay", "cmd_check", "cmd_topics_create"]

log = logging.getLogger("diffstream.tools")


def _position(text: str) -> Any:
    from diffstream.stream.transport.replay import parse_position

    try:
        return parse_position(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_common(p: argparse.ArgumentParser, *, kafka_required: bool = False) -> None:
    from diffstream.stream.cli.stream import add_kafka_args, add_registry_arg

    g = p.add_argument_group("Kafka, registry, logs")
    add_kafka_args(g, required=kafka_required)
    add_registry_arg(g)
    g.add_argument(
        "--log-json", dest="log_json", action="store_true", default=None, help="JSON log lines"
    )


def register(sub: Any, add_settings_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``tail``, ``replay`` and ``check`` to the ``diffstream`` subparsers."""
    t = sub.add_parser(
        "tail",
        help="print alerts from a topic or an alert file, one line (or JSON object) each",
        description="Decode and print alerts from a Kafka topic or an Avro alert file.",
    )
    t.add_argument("file", nargs="?", help="an Avro alert file (instead of a topic)")
    t.add_argument("--topic", dest="output_topic", default=None, help="default: the output topic")
    t.add_argument(
        "--from",
        dest="start",
        type=_position,
        default=None,
        help="earliest | latest (default) | OFFSET (negative: from the end) | ISO-8601 time",
    )
    t.add_argument("--json", dest="as_json", action="store_true", help="one JSON object per line")
    t.add_argument("--bytes", dest="bytes_as", choices=["length", "base64"], default="length")
    t.add_argument("--max", dest="max_alerts", type=int, default=None, help="stop after N")
    t.add_argument(
        "--timeout",
        dest="idle_timeout",
        type=float,
        default=None,
        help="stop after S seconds without a message (default: follow until Ctrl-C)",
    )
    t.add_argument(
        "--lsst", action="store_true", help="read with the official LSST schema (drops our fields)"
    )
    _add_common(t)
    add_settings_args(t)
    t.set_defaults(func=cmd_tail)

    r = sub.add_parser(
        "replay",
        help="re-process an archived event topic, or re-publish an alert topic, into another",
        description="Replay [start, end) of every partition of --from-topic into --output-topic.",
    )
    r.add_argument("--from-topic", dest="from_topic", required=True)
    r.add_argument("--output-topic", dest="output_topic", required=True)
    r.add_argument("--start", type=_position, default=None, help="default: earliest")
    r.add_argument("--end", type=_position, default=None, help="default: the end when started")
    r.add_argument("--mode", choices=["events", "alerts"], default="events")
    r.add_argument(
        "--group-id",
        dest="replay_group",
        default=None,
        help="the replay's own consumer group (default diffstream-replay-<random>)",
    )
    r.add_argument("--metadata-topic", dest="replay_metadata_topic", default=None)
    r.add_argument("--dlq-topic", dest="replay_dlq_topic", default=None)
    r.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="give up when no message arrives for S seconds while the range is unfinished",
    )
    r.add_argument("--metrics-port", dest="metrics_port", type=int, default=None)
    r.add_argument("--metrics-addr", dest="metrics_addr", default=None)
    _add_common(r, kafka_required=False)
    add_settings_args(r)
    r.set_defaults(func=cmd_replay)

    c = sub.add_parser(
        "check",
        help="check broker, topics, permissions and schema registry",
        description="Health check: exit 0 when ready, 1 when a check failed.",
    )
    c.add_argument(
        "--topic",
        dest="check_topics",
        action="append",
        default=None,
        help="check only these topics (repeatable; default: the worker's four topics)",
    )
    c.add_argument("--group-id", dest="group_id", default=None)
    c.add_argument("--timeout", dest="check_timeout", type=float, default=10.0)
    _add_common(c)
    add_settings_args(c)
    c.set_defaults(func=cmd_check)
    _register_topics(sub, add_settings_args)


# -- shared ---------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Settings:
    from diffstream.stream.cli.main import settings_from
    from diffstream.stream.ops.logs import setup_logging

    settings = settings_from(args)
    setup_logging(json_lines=settings.log_json, verbose=bool(getattr(args, "verbose", False)))
    return settings


def _registry(settings: Settings) -> Any:
    from diffstream.stream.transport.registry import client_from_settings

    return client_from_settings(settings)


def _clients(settings: Settings, group: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(consumer, producer) configs: the worker's (security, -X) with our own group."""
    from diffstream.stream.transport.kafka import client_configs

    consumer, producer = client_configs(
        settings.model_copy(update={"exactly_once": False, "instance_id": None})
    )
    consumer["group.id"] = group
    consumer["client.id"] = f"{consumer.get('client.id', 'diffstream')}-tools"
    return consumer, producer


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("%s: stopping after the message in hand", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _need_bootstrap(settings: Settings, command: str) -> str:
    if not settings.bootstrap_servers:
        raise ConfigError(f"{command} needs --bootstrap-servers (or DIFFSTREAM_BOOTSTRAP_SERVERS)")
    return settings.bootstrap_servers


# -- tail -----------------------------------------------------------------------------------
def cmd_tail(args: argparse.Namespace) -> int:
    from diffstream.stream.alerts.packets import LSST_SCHEMA
    from diffstream.stream.transport.tail import tail_file, tail_topic

    settings = _settings(args)
    reader = LSST_SCHEMA if args.lsst else None
    if args.max_alerts is not None and args.max_alerts < 1:
        raise ConfigError(f"--max must be >= 1, got {args.max_alerts}")
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise ConfigError(f"{path}: no such alert file")
        try:
            stats = tail_file(
                path,
                as_json=args.as_json,
                bytes_as=args.bytes_as,
                max_alerts=args.max_alerts,
                reader_schema=reader,
                out=sys.stdout,
            )
        except ValueError as exc:
            print(f"diffstream: error: {exc}", file=sys.stderr)
            return 1
        log.debug("printed %d alerts from %s", stats.printed, path)
        return EXIT_OK

    from confluent_kafka import Consumer

    from diffstream.stream.transport.replay import Position, new_group_id, partition_ranges
    from diffstream.stream.transport.wire import alert_codec

    _need_bootstrap(settings, "tail (without a FILE)")
    topic = settings.output_topic
    codec = alert_codec(topic, registry=_registry(settings), reader_schema=reader)
    conf, _ = _clients(settings, new_group_id().replace("replay", "tail"))
    consumer = Consumer(conf)
    try:
        ranges = partition_ranges(consumer, topic, args.start or Position("latest"))
        with _stop_on_signals() as stop:
            stats = tail_topic(
                consumer,
                topic,
                {p: a for p, (a, _) in ranges.items()},
                deserialize=codec.deserialize,
                as_json=args.as_json,
                bytes_as=args.bytes_as,
                max_alerts=args.max_alerts,
                idle_timeout=args.idle_timeout,
                out=sys.stdout,
                err=sys.stderr,
                should_stop=stop.is_set,
            )
    finally:
        consumer.close()
    if stats.failed:
        print(
            f"diffstream: {stats.failed} message(s) could not be decoded (see above)",
            file=sys.stderr,
        )
        return 1
    return EXIT_OK


# -- replay ---------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, Producer

    from diffstream.stream.ops.metrics import start_metrics
    from diffstream.stream.transport.replay import (
        Position,
        Progress,
        new_group_id,
        partition_ranges,
        replay_alerts,
        replay_events,
        summary_table,
    )
    from diffstream.stream.transport.wire import alert_codec, event_codec

    settings = _settings(args)
    _need_bootstrap(settings, "replay")
    if args.from_topic == args.output_topic:
        raise ConfigError(
            f"--output-topic must differ from --from-topic, both are {args.from_topic}"
        )
    if args.mode == "events" and not settings.data_roots:
        raise ConfigError("replay --mode events needs --data-root: the events' files live there")
    group = args.replay_group or new_group_id()
    registry = _registry(settings)
    out_codec = alert_codec(
        args.output_topic, registry=registry, wire_format=settings.alert_wire_format
    )
    out_codec.ensure()  # compatibility checked and schema registered before anything is read
    metrics = start_metrics(settings.metrics_port, addr=settings.metrics_addr)
    cconf, pconf = _clients(settings, group)
    consumer, producer = Consumer(cconf), Producer(pconf)
    try:
        ranges = partition_ranges(
            consumer, args.from_topic, args.start or Position("earliest"), args.end
        )
        total = sum(b - a for a, b in ranges.values())
        unit = "events" if args.mode == "events" else "alerts"
        print(
            f"replay: {args.from_topic} [{args.start or 'earliest'}, {args.end or 'latest'}) "
            f"-> {args.output_topic}: {total} {unit} in {len(ranges)} partition(s), "
            f"group {group}",
            file=sys.stderr,
        )
        progress = Progress(total, unit=unit)
        with _stop_on_signals() as stop:
            if args.mode == "alerts":
                in_codec = alert_codec(args.from_topic, registry=registry)
                stats = replay_alerts(
                    consumer,
                    producer,
                    source_topic=args.from_topic,
                    ranges=ranges,
                    output_topic=args.output_topic,
                    source_codec=in_codec,
                    target_codec=out_codec,
                    group_id=group,
                    progress=progress,
                    idle_timeout=args.idle_timeout,
                    should_stop=stop.is_set,
                    metrics=metrics,
                )
            else:
                from diffstream.stream.transport.service import Worker

                worker = Worker(settings, metrics=metrics)
                ev_codec = event_codec(args.from_topic, registry=registry, check=False)
                stats = replay_events(
                    consumer,
                    producer,
                    source_topic=args.from_topic,
                    ranges=ranges,
                    output_topic=args.output_topic,
                    worker=worker,
                    alert_codec=out_codec,
                    event_codec=ev_codec,
                    group_id=group,
                    metadata_topic=args.replay_metadata_topic,
                    dlq_topic=args.replay_dlq_topic,
                    progress=progress,
                    idle_timeout=args.idle_timeout,
                    should_stop=stop.is_set,
                )
    finally:
        producer.flush(30)
        consumer.close()
        metrics.close()
    print(summary_table(stats))
    for failure in stats.failures[:20]:
        print(f"  failed: {failure}", file=sys.stderr)
    if stats.read < stats.total:
        print(f"diffstream: replay stopped early: {stats.read}/{stats.total}", file=sys.stderr)
        return 1
    return 1 if stats.failed else EXIT_OK


# -- check ----------------------------------------------------------------------------------
def _admin(settings: Settings) -> Any:
    """An AdminClient with the worker's connection settings (and -X) but no consumer keys."""
    from confluent_kafka.admin import AdminClient

    conf, _ = _clients(settings, settings.group_id)
    consumer_only = (
        "group.id",
        "auto.offset.reset",
        "isolation.level",
        "enable.partition.eof",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "group.instance.id",
        "metadata.recovery.strategy",
    )
    admin_conf = {k: v for k, v in conf.items() if k not in consumer_only}
    # A dead broker would otherwise fill stderr with librdkafka's reconnect chatter.
    admin_conf.setdefault("log_level", 0)
    admin_conf["error_cb"] = lambda err: log.debug("kafka: %s", err)
    return AdminClient(admin_conf)


def cmd_check(args: argparse.Namespace) -> int:
    from diffstream.stream.transport.check import TopicRole, format_checks, run_checks

    settings = _settings(args)
    bootstrap = _need_bootstrap(settings, "check")
    if args.check_topics:
        roles = [TopicRole(t, "extra") for t in dict.fromkeys(args.check_topics)]
    else:
        roles = [
            TopicRole(settings.input_topic, "input", "diffstream.event"),
            TopicRole(settings.output_topic, "output", "diffstream.alert"),
            TopicRole(settings.dlq_topic, "output"),
            TopicRole(settings.metadata_topic, "output"),
        ]
    admin = _admin(settings)
    auth = settings.schema_registry_auth
    checks = run_checks(
        admin,
        bootstrap=bootstrap,
        roles=roles,
        group=None if args.check_topics else settings.group_id,
        registry_url=settings.schema_registry_url,
        registry_auth=auth.get_secret_value() if auth is not None else None,
        timeout=args.check_timeout,
    )
    print(format_checks(checks))
    return 1 if any(c.status == "FAIL" for c in checks) else EXIT_OK


# -- topics ---------------------------------------------------------------------------------
def cmd_topics_create(args: argparse.Namespace) -> int:
    from diffstream.stream.transport.topics import create_topics, default_specs, parse_duration_ms

    settings = _settings(args)
    _need_bootstrap(settings, "topics create")
    try:
        specs = default_specs(
            settings,
            partitions=args.partitions,
            retention_ms=parse_duration_ms(args.retention),
            aux_partitions=args.aux_partitions,
            aux_retention_ms=parse_duration_ms(args.aux_retention),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    result = create_topics(
        _admin(settings), specs, replication_factor=args.replication_factor, timeout=30.0
    )
    for spec in specs:
        print(
            f"{spec.name}: {result[spec.name]} (asked {spec.partitions} partitions, "
            f"retention.ms={spec.retention_ms})"
        )
    return EXIT_OK


def _register_topics(
    sub: Any, add_settings_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    from diffstream.stream.transport.topics import ALERT_PARTITIONS

    tp = sub.add_parser("topics", help="create the worker's output topics, sized on purpose")
    tsub = tp.add_subparsers(dest="topics_command", required=True)
    c = tsub.add_parser(
        "create",
        help="create the alert, dead-letter and metadata topics (existing ones are kept)",
        description="Create the output topics with the AdminClient: the alert topic with "
        f"--partitions (default {ALERT_PARTITIONS}, Rubin's) and --retention, the dead-letter "
        "and metadata topics with --aux-partitions and --aux-retention (docs/streaming.md).",
    )
    c.add_argument("--partitions", type=int, default=ALERT_PARTITIONS)
    c.add_argument("--retention", default="7d", help="alert topic: 7d, 36h, ms, or forever")
    c.add_argument("--aux-partitions", type=int, default=3)
    c.add_argument("--aux-retention", default="30d")
    c.add_argument(
        "--replication-factor", type=int, default=-1, help="default: the broker's default"
    )
    _add_common(c)
    c.add_argument("--output-topic", dest="output_topic", default=None)
    c.add_argument("--dlq-topic", dest="dlq_topic", default=None)
    c.add_argument("--metadata-topic", dest="metadata_topic", default=None)
    add_settings_args(c)
    c.set_defaults(func=cmd_topics_create)

"""``diffstream run`` and ``diffstream publish-event``.

    diffstream run --bootstrap-servers B --data-root D [--input-topic T --output-topic T
        --dlq-topic T --metadata-topic T --group-id G --instance-id NAME --exactly-once
        --max-messages N --exit-when-idle S -X key=value ... --config run.toml]
        [--metrics-port P --schema-registry-url U]
    diffstream run --input-dir IN --output-dir OUT --data-root D     (no Kafka)
    diffstream publish-event SCIENCE TEMPLATE --bootstrap-servers B --topic T
        [--visit N --detector N --exposure-id N ...]       (or --to-dir DIR instead of Kafka)

Every option is also a ``DIFFSTREAM_*`` environment variable or a key of the TOML file.
Exit codes: 0 done (also after SIGTERM/SIGINT, once the event in hand is committed), 1 the
worker stopped on an error (fatal Kafka error, error policy STOP), 2 bad settings.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from diffstream.stream.ops.errors import EXIT_BAD_INPUT, EXIT_OK, BadEvent, ConfigError
from diffstream.stream.ops.settings import Settings

__all__ = [
    "register",
    "cmd_run",
    "cmd_publish_event",
    "parse_kv",
    "add_kafka_args",
    "add_registry_arg",
]

log = logging.getLogger("diffstream.run")


def parse_kv(text: str) -> tuple[str, str]:
    """``key=value`` -> (key, value) for ``-X``; argparse reports the ValueError."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"-X takes key=value (a librdkafka property), got {text!r}"
        )
    return key.strip(), value


def add_kafka_args(p: Any, *, required: bool = False) -> None:
    """``--bootstrap-servers`` and ``-X key=value`` (a parser or an argument group); shared
    by every command that talks to Kafka."""
    p.add_argument("--bootstrap-servers", dest="bootstrap_servers", default=None, required=required)
    p.add_argument(
        "-X",
        dest="kafka_overrides",
        action="append",
        type=parse_kv,
        default=None,
        metavar="KEY=VALUE",
        help="any librdkafka property, passed to the consumer and producer unchanged "
        "(repeatable; e.g. -X security.protocol=SASL_SSL -X sasl.mechanisms=PLAIN)",
    )


def add_registry_arg(p: Any) -> None:
    p.add_argument(
        "--schema-registry-url",
        dest="schema_registry_url",
        default=None,
        help="Confluent-compatible schema registry: events under <topic>-value, the official "
        "alert schema under Rubin's subject lsst-alerts-v{M.m}-value",
    )
    p.add_argument(
        "--alert-wire-format",
        dest="alert_wire_format",
        choices=["confluent", "schemaless"],
        default=None,
        help="alerts on Kafka: confluent (default) = Rubin's framing, magic byte + schema id "
        "1101 + the official schema; schemaless = unframed Avro in our extended schema",
    )


def register(sub: Any, add_settings_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``run`` and ``publish-event`` to the ``diffstream`` subparsers."""
    r = sub.add_parser(
        "run",
        help="stream worker: events in, alerts out (Kafka, or a directory without Kafka)",
        description="Consume exposure events, subtract, publish alerts, summaries, dead letters.",
    )
    add_kafka_args(r)
    r.add_argument("--input-topic", dest="input_topic", default=None)
    r.add_argument("--output-topic", dest="output_topic", default=None)
    r.add_argument("--dlq-topic", dest="dlq_topic", default=None)
    r.add_argument("--metadata-topic", dest="metadata_topic", default=None)
    r.add_argument("--group-id", dest="group_id", default=None)
    r.add_argument(
        "--instance-id",
        dest="instance_id",
        default=None,
        help="stable replica name: static group membership and transactional id",
    )
    r.add_argument(
        "--exactly-once",
        dest="exactly_once",
        action="store_true",
        default=None,
        help="transactional producer: alerts and offsets commit together",
    )
    r.add_argument(
        "--ledger-topic",
        dest="ledger_topic",
        default=None,
        help="compacted topic of processed exposures (default diffstream.processed; '' : none)",
    )
    r.add_argument(
        "--reprocess",
        dest="reprocess",
        action="store_true",
        default=None,
        help="process events the ledger lists as already processed",
    )
    r.add_argument("--max-messages", dest="max_messages", type=int, default=None)
    r.add_argument("--exit-when-idle", dest="exit_when_idle", type=float, default=None)
    r.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port (0: any free port)",
    )
    r.add_argument("--metrics-addr", dest="metrics_addr", default=None)
    r.add_argument(
        "--log-json",
        dest="log_json",
        action="store_true",
        default=None,
        help="JSON log lines (also DIFFSTREAM_LOG_JSON=1)",
    )
    add_registry_arg(r)
    r.add_argument("--input-dir", dest="input_dir", default=None, help="directory transport in")
    r.add_argument("--output-dir", dest="output_dir", default=None, help="directory transport out")
    r.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        default=None,
        help="subscribe at once; the first event then pays the kernels' compile or cache load",
    )
    add_settings_args(r)
    r.set_defaults(func=cmd_run)

    w = sub.add_parser(
        "warmup",
        help="compile the kernels (fill the Numba cache) on a simulated pair, then exit",
        description="Run a small simulated pair through the pipeline with these settings so "
        "that every kernel is compiled into the Numba cache (NUMBA_CACHE_DIR): an init "
        "container or image build step, once per machine type.  Exit 0 when it subtracted.",
    )
    add_settings_args(w)
    w.set_defaults(func=cmd_warmup)

    pe = sub.add_parser(
        "publish-event",
        help="put one exposure-ready event on a topic (or into a directory)",
        description="Publish an exposure event for SCIENCE and TEMPLATE.",
    )
    pe.add_argument("science")
    pe.add_argument("template")
    add_kafka_args(pe)
    pe.add_argument("--topic", dest="input_topic", default=None, help="default: the input topic")
    pe.add_argument("--to-dir", default=None, help="write an event file here instead of Kafka")
    add_registry_arg(pe)
    pe.add_argument("--visit", type=int, default=None, help="default: the VISIT keyword")
    pe.add_argument("--detector", type=int, default=None, help="default: the DETECTOR keyword")
    pe.add_argument("--exposure-id", type=int, default=None, help="default: EXPID, else visit")
    pe.add_argument("--band", default=None)
    pe.add_argument("--midpoint-mjd-tai", type=float, default=None)
    pe.add_argument("--request-id", default=None)
    add_settings_args(pe)
    pe.set_defaults(func=cmd_publish_event)


def _settings(args: argparse.Namespace) -> Settings:
    from diffstream.stream.cli.main import settings_from

    return settings_from(args)


def _make_metrics(settings: Settings) -> Any:
    """The metrics hook of ``run``: Prometheus (stream.ops.metrics), served on ``metrics_port``
    when one is given."""
    from diffstream.stream.ops.metrics import start_metrics

    return start_metrics(
        settings.metrics_port,
        addr=settings.metrics_addr,
        unhealthy_after_s=settings.unhealthy_unassigned_s,
    )


def _codecs(settings: Settings) -> dict[str, Any]:
    """Worker keyword arguments for the value encodings (stream.transport.wire.worker_codecs):
    alerts Rubin-framed by default, events single-object encoded; with a schema registry the
    alert schema is registered now, before anything is consumed."""
    from diffstream.stream.transport.wire import worker_codecs

    events, alerts = worker_codecs(settings)
    return {"event_decoder": events.deserialize, "alert_serializer": alerts.serialize}


def _close_metrics(metrics: Any) -> None:
    close = getattr(metrics, "close", None)
    if close is not None:
        close()


# -- run ------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from diffstream.stream.ops.logs import setup_logging
    from diffstream.stream.transport.service import StopProcessing, Worker, run_loop

    settings = _settings(args)
    setup_logging(json_lines=settings.log_json, verbose=bool(getattr(args, "verbose", False)))
    if not settings.bootstrap_servers and not (settings.input_dir and settings.output_dir):
        raise ConfigError(
            "run needs --bootstrap-servers (Kafka) or both --input-dir and --output-dir "
            "(directory transport)"
        )
    worker = Worker(settings, **_codecs(settings))  # refuses a run without data roots
    worker.host_share = _host_share(settings)
    metrics = worker.metrics = _make_metrics(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        # Only a flag: the loop finishes (delivers and commits) the event in hand first.
        log.info("%s: finishing the event in hand, then exiting", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # SIGUSR1 prints every thread's stack to stderr: where a stuck worker is stuck.
    if sys.__stderr__ is not None:
        with contextlib.suppress(io.UnsupportedOperation, AttributeError, ValueError):
            faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    transport: Any = None
    connecting: Future[Any] | None = None
    try:
        if settings.bootstrap_servers:
            from diffstream.stream.transport.kafka import KafkaTransport

            # The producer, the output-topic check, the transactions' fencing and the ledger
            # read hold no partitions: they connect in a thread while the warm-up loads the
            # kernels (librdkafka's waits and LLVM's object loading release the GIL), so the
            # ledger's read (~0.5 s) and the connections leave the start-up's critical path.
            # Only the subscription waits for the warm-up.
            pool = ThreadPoolExecutor(1, "connect")
            connecting = pool.submit(
                KafkaTransport,
                settings, metrics=metrics, stop=stop, worker=worker.worker_id, subscribe=False,
            )  # fmt: skip
            pool.shutdown(wait=False)  # the thread ends with its one task
        # Before subscribing (no partitions held meanwhile); /metrics is already served and
        # SIGTERM already only sets the flag, so a stop during the warm-up exits cleanly.
        if settings.warmup:
            _warm_up_before_subscribing(settings, metrics)
        if connecting is not None:
            transport, connecting = connecting.result(), None
            transport.subscribe()
            worker.ledger = transport.ledger  # None with --ledger-topic ''
            where = f"{settings.bootstrap_servers} topic {settings.input_topic}"
        else:
            from diffstream.stream.transport.directory import DirTransport

            inp, out = str(settings.input_dir), str(settings.output_dir)  # both checked above
            transport = DirTransport(inp, out, metrics=metrics)
            where = f"directory {settings.input_dir}"
        mode = "exactly-once" if settings.exactly_once and settings.bootstrap_servers else ""
        log.info("worker %s consuming %s %s", worker.worker_id, where, mode)
        stats = run_loop(
            worker,
            transport,
            max_messages=settings.max_messages,
            exit_when_idle=settings.exit_when_idle,
            stop=stop,
            status_interval=settings.status_interval_s,
        )
    except StopProcessing as exc:
        log.error("%s", exc)
        return 1
    except KafkaException as exc:
        # FatalKafkaError included: a fenced member or producer, failed authentication.  Exit 1
        # so that the orchestrator restarts the worker (it would otherwise sit consuming nothing).
        log.critical("stopping on a fatal Kafka error (exit 1): %s", exc)
        return 1
    finally:
        if connecting is not None:  # the warm-up raised: the transport is not ours yet
            with contextlib.suppress(Exception):
                transport = connecting.result()
        if transport is not None:
            transport.close()
        if worker.host_share is not None:
            worker.host_share.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        faulthandler.unregister(signal.SIGUSR1)
        _close_metrics(metrics)
    log.info("%s", stats.line())
    print(stats.line())
    return EXIT_OK


def _host_share(settings: Settings) -> Any:
    """This worker's slot among the ``run`` workers on the same CPUs (stream.ops.cpus), or
    None when ``cpus`` is set (the operator gave each worker its share) or no slot can be
    held; then every event uses all of ``cpus`` and the log says why."""
    if settings.cpus is not None:
        return None
    from diffstream.stream.ops.cpus import HostShare

    try:
        return HostShare()
    except (OSError, ConfigError) as exc:
        log.warning(
            "CPUs not shared with other workers on this host (%s); each event uses every "
            "available CPU: set DIFFSTREAM_CPUS per worker if several run here",
            exc,
        )
        return None


def _warm_up_before_subscribing(settings: Settings, metrics: Any) -> None:
    import time

    from diffstream.stream.cli.warmup import warm_up

    t0 = time.perf_counter()
    ok = True
    try:
        warm_up(settings)
    except Exception as exc:
        # The warm-up's pair is ours, not an event: a setting that rejects it (a strict
        # template fraction, a minimum star count) must not stop a worker that real
        # exposures satisfy.  Kernels compiled before the failure stay compiled.
        ok = False
        log.warning("warm-up did not finish (%s: %s); consuming anyway", type(exc).__name__, exc)
    metrics.on_warmup(time.perf_counter() - t0, ok)


def cmd_warmup(args: argparse.Namespace) -> int:
    from diffstream.stream.cli.warmup import WARMUP_SHAPE, warm_up

    settings = _settings(args)
    timings = warm_up(settings)
    ny, nx = WARMUP_SHAPE
    print(
        f"warm-up ({settings.method}, {nx}x{ny} simulated pair): imports "
        f"{timings['imports']:.1f} s, simulation {timings['simulate']:.1f} s, subtraction "
        f"{timings['subtract']:.1f} s, total {timings['total']:.1f} s"
    )
    return EXIT_OK


# -- publish-event --------------------------------------------------------------------------
def _header_ints(path: str) -> dict[str, int]:
    """VISIT/DETECTOR/EXPID from the first two HDUs of a FITS file (absent keys left out)."""
    from astropy.io import fits

    found: dict[str, int] = {}
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            for hdu in list(hdul)[:2]:
                for key in ("VISIT", "DETECTOR", "EXPID"):
                    value = hdu.header.get(key)
                    if key not in found and isinstance(value, int) and not isinstance(value, bool):
                        found[key] = value
    except (OSError, ValueError) as exc:
        raise BadEvent(f"{path}: cannot read the FITS header: {exc}", path=path) from exc
    return found


def _location(text: str) -> str:
    # file:// URIs stay as given; plain paths become absolute so that the worker, running
    # elsewhere (another cwd), opens the same file.
    if text.startswith("file:"):
        return text
    return str(Path(text).expanduser().resolve())


def cmd_publish_event(args: argparse.Namespace) -> int:
    from diffstream.stream.transport.events import encode_event, make_event

    settings = _settings(args)
    if not settings.bootstrap_servers and not args.to_dir:
        raise ConfigError("publish-event needs --bootstrap-servers (with --topic) or --to-dir")
    science, template = _location(args.science), _location(args.template)
    header: dict[str, int] = {}
    if None in (args.visit, args.detector, args.exposure_id) and not science.startswith("file:"):
        header = _header_ints(science)
    visit = args.visit if args.visit is not None else header.get("VISIT")
    detector = args.detector if args.detector is not None else header.get("DETECTOR")
    exposure_id = args.exposure_id if args.exposure_id is not None else header.get("EXPID", visit)
    missing = [n for n, v in (("--visit", visit), ("--detector", detector)) if v is None]
    if missing:
        print(
            f"diffstream: error: {science} has no VISIT/DETECTOR keywords: give {missing}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    event = make_event(
        science,
        template,
        visit=int(visit),  # type: ignore[arg-type]
        detector=int(detector),  # type: ignore[arg-type]
        exposure_id=int(exposure_id),  # type: ignore[arg-type]
        exposure_bits=settings.exposure_bits,
        band=args.band,
        midpoint_mjd_tai=args.midpoint_mjd_tai,
        request_id=args.request_id,
    )
    if args.to_dir:
        from diffstream.stream.transport.directory import write_event_file

        out = Path(args.to_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = write_event_file(out / f"{event['requestId']}.avro", [event])
        print(f"requestId {event['requestId']} -> {path}")
        return EXIT_OK
    if settings.schema_registry_url:
        from diffstream.stream.transport.registry import client_from_settings
        from diffstream.stream.transport.wire import event_codec

        codec = event_codec(settings.input_topic, registry=client_from_settings(settings))
        return _publish_kafka(settings, event, codec.serialize(event, None), codec.headers)
    return _publish_kafka(settings, event, encode_event(event))


def _publish_kafka(
    settings: Settings, event: dict[str, Any], value: bytes, headers: Any = ()
) -> int:
    from confluent_kafka import Producer

    from diffstream.stream.transport.kafka import client_configs

    _, conf = client_configs(settings.model_copy(update={"exactly_once": False}))
    result: dict[str, Any] = {}
    producer = Producer(conf)
    try:
        producer.produce(
            settings.input_topic,
            key=str(event["exposureId"]).encode(),
            value=value,
            headers=list(headers),
            on_delivery=lambda err, msg: result.update(err=err, msg=msg),
        )
        left = producer.flush(60.0)
    finally:
        producer.flush(0)
    if left or result.get("err") is not None or "msg" not in result:
        reason = result.get("err") or "not acknowledged within 60 s"
        print(f"diffstream: error: event not delivered: {reason}", file=sys.stderr)
        return 1
    msg = result["msg"]
    print(f"requestId {event['requestId']} -> {msg.topic()}[{msg.partition()}]@{msg.offset()}")
    return EXIT_OK

"""Replay, tail, check, metrics and wire formats on a real broker.

One module-scoped *first run*: simulated 256 px pairs, exposure events on a 2-partition topic
with explicit timestamps (batch 1 at T0, batch 2 at T0 + 60 s, so time positions need no
sleeping), the real worker (``Worker`` + ``KafkaTransport`` + ``run_loop``) with Prometheus
metrics served on a free port and scraped over HTTP while it runs.  The replays must then
reproduce its alerts exactly (same diaSourceIds, same fluxes).

Event topic layout (partition: offset event)::

    p0: 0 garbage (T0)   1 e0 (T0)   2 e2 (T0 + 60 s)
    p1: 0 e1 (T0)        1 e3 (T0 + 60 s)
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from diffstream.stream.alerts.packets import write_alert_file
from diffstream.stream.cli.main import main
from diffstream.stream.ops.metrics import start_metrics
from diffstream.stream.ops.settings import Settings
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from diffstream.stream.transport.events import encode_event, make_event
from diffstream.stream.transport.kafka import KafkaTransport
from diffstream.stream.transport.replay import REPLAY_SOURCE_HEADER
from diffstream.stream.transport.service import Worker, run_loop
from diffstream.stream.transport.wire import (
    FINGERPRINT_HEADER,
    RUBIN_SCHEMA_ID,
    WireError,
    alert_codec,
    event_codec,
    unframe,
    worker_codecs,
)
from tests.unit.test_metrics import sample

WAIT_S = 60.0  # bound on every wait; a healthy broker needs seconds
T0_MS = 1_790_000_000_000  # batch 1 timestamp (2026-09-21); batch 2 is 60 s later
T1_MS = T0_MS + 60_000
EVENTS = {  # name: (seed, exposure id, partition, timestamp)
    "e0": (31, 1001, 0, T0_MS),
    "e1": (32, 1002, 1, T0_MS),
    "e2": (33, 1003, 0, T1_MS),
    "e3": (34, 1004, 1, T1_MS),
}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _ready(admin: AdminClient, topic: str, partitions: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        t = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            if all(p.leader >= 0 for p in t.partitions.values()):
                return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic} not ready within {WAIT_S} s")


@pytest.fixture(scope="module")
def topics(kafka_admin: AdminClient) -> Iterator[Any]:
    """Factory for module-lived topics (the conftest's make_topic is per test)."""
    made: list[str] = []

    def make(stem: str, partitions: int = 2) -> str:
        name = f"it-tools-{stem}-{uuid.uuid4().hex[:8]}"
        new = NewTopic(name, num_partitions=partitions, replication_factor=1)
        kafka_admin.create_topics([new])[name].result(timeout=WAIT_S)
        _ready(kafka_admin, name, partitions)
        made.append(name)
        return name

    yield make
    for future in kafka_admin.delete_topics(made, operation_timeout=10).values():
        try:
            future.result(timeout=15)
        except Exception:  # noqa: S110 - a leftover topic is harmless
            pass


def produce(bootstrap: str, topic: str, items: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Produce dicts (value, key, headers, partition, timestamp) in order; (partition, offset)
    of each once acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    done: dict[int, tuple[int, int]] = {}
    errors: list[Any] = []
    for i, item in enumerate(items):

        def report(err, msg, i=i):
            if err is not None:
                errors.append(err)
            else:
                done[i] = (msg.partition(), msg.offset())

        producer.produce(topic, on_delivery=report, **item)
        producer.flush(WAIT_S)  # one at a time: offsets follow the list order
    assert not errors and len(done) == len(items), errors
    return [done[i] for i in range(len(items))]


def consume(bootstrap: str, topic: str, n: int, *, quiet_s: float = 1.0) -> list[Any]:
    """Every message of ``topic`` from the beginning: waits for ``n`` (bounded), then for
    ``quiet_s`` more to catch extras."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"it-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        md = consumer.list_topics(topic=topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        got: list[Any] = []
        deadline = time.monotonic() + WAIT_S
        quiet_until = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
                quiet_until = None
            elif msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                raise AssertionError(f"consuming {topic}: {msg.error()}")
            if len(got) >= n:
                quiet_until = quiet_until or time.monotonic() + quiet_s
                if time.monotonic() >= quiet_until:
                    break
        return got
    finally:
        consumer.close()


def alerts_by_exposure(messages: list[Any], codec: Any = None) -> dict[int, dict[int, tuple]]:
    """exposureId header -> {diaSourceId: (psfFlux, psfFluxErr, ra, dec)}."""
    codec = codec or alert_codec("x")
    out: dict[int, dict[int, tuple]] = {}
    for msg in messages:
        alert = codec.deserialize(msg.value(), msg)
        headers = dict(msg.headers())
        src = alert["diaSource"]
        key = int(headers["diffstream.exposureId"])
        assert msg.key() == str(alert["diaSourceId"]).encode()
        out.setdefault(key, {})[alert["diaSourceId"]] = (
            src["psfFlux"],
            src["psfFluxErr"],
            src["ra"],
            src["dec"],
        )
    return out


def scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
        return resp.read().decode()


@pytest.fixture(scope="module")
def first_run(kafka_bootstrap: str, topics: Any, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tools-data")
    for name, (seed, _, _, _) in EVENTS.items():
        pair = simulate_pair(seed=seed, shape=(256, 256), n_stars=60, n_transients=8)
        write_pair(pair, root / name)
    events_topic, alerts_topic = topics("events"), topics("alerts")
    dlq_topic, meta_topic = topics("dlq", 1), topics("meta", 1)

    def event_item(name: str) -> dict[str, Any]:
        _, exposure_id, partition, ts = EVENTS[name]
        event = make_event(
            str(root / name / "science.fits"),
            str(root / name / "template.fits"),
            visit=exposure_id,
            detector=5,
            exposure_id=exposure_id,
            request_id=name,
            produced_at_ms=int(time.time() * 1000),
        )
        return {
            "value": encode_event(event),
            "key": name.encode(),
            "partition": partition,
            "timestamp": ts,
        }

    garbage = {"value": b"not an event", "key": b"bad", "partition": 0, "timestamp": T0_MS}
    placed = produce(
        kafka_bootstrap,
        events_topic,
        [garbage, event_item("e0"), event_item("e1"), event_item("e2"), event_item("e3")],
    )
    assert placed == [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1)]

    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        input_topic=events_topic,
        output_topic=alerts_topic,
        dlq_topic=dlq_topic,
        metadata_topic=meta_topic,
        group_id=f"it-tools-{uuid.uuid4().hex[:6]}",
        data_roots=[str(root)],
    )
    metrics = start_metrics(0)
    events, alerts_out = worker_codecs(settings)  # as `diffstream run` builds its worker
    worker = Worker(
        settings,
        metrics=metrics,
        event_decoder=events.deserialize,
        alert_serializer=alerts_out.serialize,
    )
    transport = KafkaTransport(settings, metrics=metrics, worker=worker.worker_id)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["stats"] = run_loop(worker, transport, max_messages=5, exit_when_idle=WAIT_S)
        except BaseException as exc:  # surfaced below
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    during: list[str] = []
    try:
        deadline = time.monotonic() + 2 * WAIT_S
        while thread.is_alive() and time.monotonic() < deadline:
            during.append(scrape(metrics.port))
            thread.join(0.3)
        assert not thread.is_alive(), "the worker did not finish its 5 events in time"
        final = scrape(metrics.port)
    finally:
        transport.close()
        metrics.close()
    if "error" in result:
        raise result["error"]
    stats = result["stats"]
    assert (stats.done, stats.failed, stats.committed) == (4, 1, 5), stats.line()
    messages = consume(kafka_bootstrap, alerts_topic, stats.alerts)
    alerts = alerts_by_exposure(messages)
    assert sorted(alerts) == [1001, 1002, 1003, 1004]
    assert all(len(a) > 5 for a in alerts.values())
    return {
        "root": root,
        "events": events_topic,
        "alerts": alerts_topic,
        "messages": messages,
        "by_exposure": alerts,
        "stats": stats,
        "during": during,
        "final": final,
    }


# -- metrics --------------------------------------------------------------------------------
def test_metrics_scraped_over_http_match_the_run(first_run):
    stats, text = first_run["stats"], first_run["final"]
    assert len(first_run["during"]) >= 1  # scraped while the worker ran
    consumed = [sample(t, "diffstream_events_consumed_total") for t in first_run["during"]]
    assert consumed == sorted(consumed)  # counters only grow
    assert sample(text, "diffstream_events_consumed_total") == stats.consumed == 5
    assert sample(text, "diffstream_events_processed_total") == stats.done == 4
    assert sample(text, "diffstream_events_dead_lettered_total", kind="bad_event") == 1
    assert sample(text, "diffstream_alerts_published_total") == stats.alerts
    assert stats.alerts == sum(len(a) for a in first_run["by_exposure"].values())
    assert sample(text, "diffstream_event_to_alert_seconds_count") == 4
    assert sample(text, "diffstream_step_duration_seconds_count", step="imageDifference") == 4
    for p in ("0", "1"):  # the transport reports lag per partition; all consumed at the end
        assert sample(text, "diffstream_consumer_lag", partition=p) == 0


# -- replay ---------------------------------------------------------------------------------
def _replay(first_run, kafka_bootstrap, out_topic, *extra: str) -> int:
    return main(
        [
            "replay",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--from-topic",
            first_run["events"],
            "--output-topic",
            out_topic,
            "--data-root",
            str(first_run["root"]),
            "--idle-timeout",
            "30",
            *extra,
        ]
    )


def test_replay_events_by_offset_gives_the_same_alerts(first_run, kafka_bootstrap, topics, capsys):
    out = topics("replay-offset")
    t_start = time.time()
    assert _replay(first_run, kafka_bootstrap, out, "--start", "1", "--metrics-port", "0") == 0
    report = capsys.readouterr()
    want = {k: first_run["by_exposure"][k] for k in (1001, 1003, 1004)}  # e0, e2, e3
    n = sum(len(a) for a in want.values())
    messages = consume(kafka_bootstrap, out, n)
    assert alerts_by_exposure(messages) == want
    sources = {dict(m.headers())[REPLAY_SOURCE_HEADER].decode() for m in messages}
    assert sources == {
        f"{first_run['events']}[0]@1",
        f"{first_run['events']}[0]@2",
        f"{first_run['events']}[1]@1",
    }
    _assert_stamped_now(messages, t_start)
    assert "3 events in" in report.out and "done 3, no work 0, failed 0" in report.out
    rows = {line.split()[0]: line.split() for line in report.out.splitlines() if line}
    assert rows["0"][1:4] == ["1", "3", "2"] and rows["1"][1:4] == ["1", "2", "1"]
    assert "replay: 3/3 events (100%)" in report.err


def test_replay_events_by_time_gives_the_same_alerts(first_run, kafka_bootstrap, topics, capsys):
    out = topics("replay-time")
    start = _iso(T0_MS + 30_000)  # between the batches: e2 and e3 only
    assert _replay(first_run, kafka_bootstrap, out, "--start", start, "--group-id", "it-g") == 0
    assert "group it-g" in capsys.readouterr().out
    want = {k: first_run["by_exposure"][k] for k in (1003, 1004)}
    messages = consume(kafka_bootstrap, out, sum(len(a) for a in want.values()))
    assert alerts_by_exposure(messages) == want


def test_replay_events_with_end_time_reports_the_bad_event(
    first_run, kafka_bootstrap, topics, capsys
):
    out = topics("replay-end")
    # [earliest, T0 + 30 s): garbage, e0, e1; the garbage is counted as failed -> exit 1
    assert _replay(first_run, kafka_bootstrap, out, "--end", _iso(T0_MS + 30_000)) == 1
    report = capsys.readouterr()
    assert "done 2, no work 0, failed 1" in report.out
    assert f"failed: {first_run['events']}[0]@0:" in report.err
    want = {k: first_run["by_exposure"][k] for k in (1001, 1002)}
    messages = consume(kafka_bootstrap, out, sum(len(a) for a in want.values()))
    assert alerts_by_exposure(messages) == want


def test_replay_alerts_republishes_identical_alerts(first_run, kafka_bootstrap, topics, capsys):
    out = topics("replay-alerts")
    t_start = time.time()
    rc = main(
        [
            "replay",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--mode",
            "alerts",
            "--from-topic",
            first_run["alerts"],
            "--output-topic",
            out,
            "--start",
            "earliest",
        ]
    )
    assert rc == 0
    n = len(first_run["messages"])
    assert f"re-published {n}, failed 0" in capsys.readouterr().out
    codec = alert_codec(out)
    original = {m.key(): codec.deserialize(m.value(), m) for m in first_run["messages"]}
    copied = consume(kafka_bootstrap, out, n)
    assert {m.key(): codec.deserialize(m.value(), m) for m in copied} == original
    assert all(dict(m.headers())[FINGERPRINT_HEADER] for m in copied)
    _assert_stamped_now(copied, t_start)


def _assert_stamped_now(messages, t_start: float) -> None:
    """A replayed alert carries one producer_timestamp, of its re-publication (not the
    archive's: a consumer measures delivery latency from it)."""
    for m in messages:
        stamps = [v for k, v in m.headers() if k == "producer_timestamp"]
        assert len(stamps) == 1, m.headers()
        assert t_start - 1 <= int(stamps[0]) / 1e6 <= time.time() + 1


# -- tail -----------------------------------------------------------------------------------
def test_tail_topic_prints_every_alert(first_run, kafka_bootstrap, capsys):
    n = len(first_run["messages"])
    rc = main(
        [
            "tail",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            first_run["alerts"],
            "--from",
            "earliest",
            "--json",
            "--max",
            str(n),
            "--timeout",
            "20",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = {i for a in first_run["by_exposure"].values() for i in a}
    assert len(rows) == n and {r["diaSourceId"] for r in rows} == want
    assert all(isinstance(r["cutoutDifference"], dict) for r in rows)  # {"bytes": N}


def test_tail_topic_positions_and_line_format(first_run, kafka_bootstrap, capsys):
    topic, n = first_run["alerts"], len(first_run["messages"])
    rc = main(
        [
            "tail",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            topic,
            "--from",
            "-2",
            "--timeout",
            "2",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # the last 2 of each of the 2 partitions
    assert all(" diaSourceId=" in line and " nJy " in line for line in lines)
    # The alerts were produced during this session: an hour ago is before all of them.
    hour_ago = _iso(int(time.time() * 1000) - 3_600_000)
    rc = main(
        [
            "tail",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            topic,
            "--from",
            hour_ago,
            "--timeout",
            "2",
        ]
    )
    assert rc == 0 and len(capsys.readouterr().out.splitlines()) == n
    rc = main(
        [
            "tail",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            first_run["alerts"],
            "--timeout",
            "1",
        ]
    )
    assert rc == 0 and capsys.readouterr().out == ""


def test_tail_file(first_run, tmp_path, capsys):
    codec = alert_codec("x")
    alerts = [codec.deserialize(m.value(), m) for m in first_run["messages"]]
    path = tmp_path / "archive.avro"
    write_alert_file(path, alerts)
    assert main(["tail", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        f"diaSourceId={a['diaSourceId']}" for a in alerts
    ]


def test_tail_with_the_wrong_schema_is_a_clear_error(first_run, kafka_bootstrap, capsys):
    # The events topic holds single-object events (and one garbage message), not alerts.
    rc = main(
        [
            "tail",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            first_run["events"],
            "--from",
            "earliest",
            "--max",
            "5",
            "--timeout",
            "10",
        ]
    )
    assert rc == 1
    report = capsys.readouterr()
    assert report.out == ""
    errors = report.err.splitlines()
    assert sum("Avro single-object encoded with schema fingerprint" in e for e in errors) == 4
    assert any(e.startswith(f"{first_run['events']}[0]@0: cannot decode") for e in errors)
    assert "5 message(s) could not be decoded" in report.err


# -- wire formats through the broker --------------------------------------------------------
def test_wire_round_trips_through_the_broker(first_run, kafka_bootstrap, topics):
    # The worker's alerts are Rubin-framed (id 1101) by default; the schemaless opt-in too
    # goes through the broker and back.
    framed_codec = alert_codec("x")
    assert all(unframe(m.value())[0] == RUBIN_SCHEMA_ID for m in first_run["messages"])
    alerts = [framed_codec.deserialize(m.value(), m) for m in first_run["messages"][:3]]
    plain_codec = alert_codec("x", wire_format="schemaless")
    schemaless, framed = topics("wire-plain", 1), topics("wire-framed", 1)
    for topic, codec in ((schemaless, plain_codec), (framed, framed_codec)):
        produce(
            kafka_bootstrap,
            topic,
            [{"value": codec.serialize(a, None), "headers": list(codec.headers)} for a in alerts],
        )
    got = consume(kafka_bootstrap, schemaless, 3)
    assert all(m.value()[0] != 0 for m in got)
    assert [plain_codec.deserialize(m.value(), m) for m in got] == alerts
    got = consume(kafka_bootstrap, framed, 3)
    assert all(unframe(m.value())[0] == RUBIN_SCHEMA_ID for m in got)
    assert [framed_codec.deserialize(m.value(), m) for m in got] == alerts


def test_wrong_schema_through_the_broker(kafka_bootstrap, topics):
    topic = topics("wire-wrong", 1)
    events = event_codec(topic)
    event = make_event("/d/s.fits", "/d/t.fits", visit=1, detector=2, exposure_id=3)
    produce(kafka_bootstrap, topic, [{"value": events.serialize(event, None)}])
    (msg,) = consume(kafka_bootstrap, topic, 1)
    assert events.deserialize(msg.value(), msg)["requestId"] == event["requestId"]
    with pytest.raises(WireError, match="single-object encoded with schema fingerprint"):
        alert_codec(topic).deserialize(msg.value(), msg)


# -- check ----------------------------------------------------------------------------------
def test_check_reports_topics_permissions_and_missing_ones(first_run, kafka_bootstrap, capsys):
    missing = f"it-tools-missing-{uuid.uuid4().hex[:6]}"
    rc = main(
        [
            "check",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            first_run["alerts"],
            "--topic",
            missing,
        ]
    )
    assert rc == 1
    out = capsys.readouterr().out
    assert f"[ OK ] broker {kafka_bootstrap}: 1 broker(s)" in out
    assert f"[ OK ] topic {first_run['alerts']} (extra): 2 partition(s), replication 1" in out
    assert "permitted: " in out and "READ" in out and "WRITE" in out
    assert f"[FAIL] topic {missing} (extra): does not exist" in out
    assert "ACLs:" in out
    assert out.rstrip().endswith("NOT ready: 1 failed, 0 warning(s)")
    rc = main(["check", "--bootstrap-servers", kafka_bootstrap, "--topic", first_run["alerts"]])
    assert rc == 0 and "ready: 0 failed" in capsys.readouterr().out


def test_check_unreachable_broker_fails_fast(capsys):
    t0 = time.monotonic()
    assert main(["check", "--bootstrap-servers", "127.0.0.1:9", "--timeout", "2"]) == 1
    assert time.monotonic() - t0 < 15
    assert "[FAIL] broker 127.0.0.1:9: unreachable within 2 s" in capsys.readouterr().out

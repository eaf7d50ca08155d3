"""``diffstream tail`` formatting and file mode, replay positions, progress and summary
(stream.transport.tail, stream.transport.replay), with fake consumers: no broker."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime

import pytest
from confluent_kafka import KafkaError, TopicPartition

from diffstream.stream.alerts.packets import serialize_alert, write_alert_file
from diffstream.stream.cli.main import main
from diffstream.stream.transport.replay import (
    PartitionStats,
    Position,
    Progress,
    ReplayStats,
    parse_position,
    partition_ranges,
    summary_table,
)
from diffstream.stream.transport.tail import alert_json, alert_line, tail_file, tail_topic
from diffstream.stream.transport.wire import FINGERPRINT_HEADER, alert_codec
from tests.unit.test_wire import ALERT_FP, make_test_alert

pytestmark = pytest.mark.unit


# -- one line per alert ---------------------------------------------------------------------
def test_alert_line_fields():
    line = alert_line(make_test_alert(2))
    assert line == (
        "diaSourceId=1099511627778 visit=7 det=3 band=r  ra=150.000200 dec=-30.000000  "
        "psfFlux=1234.5\u00b156.5 nJy  snr=21.8  +"
    )


def test_alert_line_negative_and_missing_values():
    alert = make_test_alert(flux=-99.0)
    alert["diaSource"]["snr"] = None
    assert alert_line(alert).endswith("psfFlux=-99.0\u00b156.5 nJy  snr=nan  -")


def test_alert_json_bytes_as_length_and_base64():
    alert = make_test_alert()
    short = json.loads(alert_json(alert))
    assert short["cutoutDifference"] == {"bytes": 64} and short["cutoutScience"] is None
    assert short["diaSource"]["psfFlux"] == 1234.5
    full = json.loads(alert_json(alert, bytes_as="base64"))
    assert base64.b64decode(full["cutoutDifference"]) == b"D" * 64


def test_alert_json_nan_becomes_null():
    alert = make_test_alert()
    alert["diaSource"]["psfChi2"] = float("nan")
    assert json.loads(alert_json(alert))["diaSource"]["psfChi2"] is None


def test_alert_json_rejects_unknown_bytes_mode():
    with pytest.raises(
        ValueError, match="bytes_as must be one of \\('length', 'base64'\\), got 'hex'"
    ):
        alert_json(make_test_alert(), bytes_as="hex")


# -- files ----------------------------------------------------------------------------------
@pytest.fixture
def alert_file(tmp_path):
    path = tmp_path / "alerts.avro"
    write_alert_file(path, [make_test_alert(i) for i in range(3)])
    return path


def test_tail_file_prints_every_alert(alert_file):
    out = io.StringIO()
    stats = tail_file(alert_file, out=out)
    lines = out.getvalue().splitlines()
    assert stats.printed == 3 and len(lines) == 3
    assert [line.split()[0] for line in lines] == [
        f"diaSourceId={1_099_511_627_776 + i}" for i in range(3)
    ]


def test_tail_file_max_and_json(alert_file):
    out = io.StringIO()
    stats = tail_file(alert_file, out=out, as_json=True, max_alerts=2)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert stats.printed == 2 and [r["diaSourceId"] for r in rows] == [
        1_099_511_627_776,
        1_099_511_627_777,
    ]


def test_cli_tail_file(alert_file, capsys):
    assert main(["tail", str(alert_file), "--json", "--lsst"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all("diffstreamMetadata" not in r for r in rows)


def test_cli_tail_missing_file(tmp_path, capsys):
    assert main(["tail", str(tmp_path / "nope.avro")]) == 2
    assert "nope.avro: no such alert file" in capsys.readouterr().err


def test_cli_tail_not_an_alert_file(tmp_path, capsys):
    bad = tmp_path / "bad.avro"
    bad.write_bytes(b"not avro at all")
    assert main(["tail", str(bad)]) == 1
    assert "cannot read alerts from" in capsys.readouterr().err


def test_cli_tail_topic_needs_bootstrap(capsys, monkeypatch):
    monkeypatch.delenv("DIFFSTREAM_BOOTSTRAP_SERVERS", raising=False)
    assert main(["tail", "--topic", "alerts"]) == 2
    assert "needs --bootstrap-servers" in capsys.readouterr().err


# -- topics, with a fake consumer -----------------------------------------------------------
class FakeMessage:
    def __init__(self, value, offset, partition=0, headers=None, error=None):
        self._value, self._offset, self._partition = value, offset, partition
        self._headers, self._error = headers, error

    def value(self):
        return self._value

    def offset(self):
        return self._offset

    def partition(self):
        return self._partition

    def topic(self):
        return "alerts"

    def headers(self):
        return self._headers

    def error(self):
        return self._error


class FakeConsumer:
    def __init__(self, messages=(), marks=None, times=None):
        self.messages = list(messages)
        self.marks = marks or {}
        self.times = times or {}
        self.assigned = None

    def assign(self, tps):
        self.assigned = [(tp.partition, tp.offset) for tp in tps]

    def unassign(self):
        pass

    def poll(self, timeout):
        return self.messages.pop(0) if self.messages else None

    def list_topics(self, topic=None, timeout=None):
        parts = {p: None for p in self.marks}
        topics = {"alerts": type("T", (), {"partitions": parts, "error": None})()}
        return type("M", (), {"topics": topics})()

    def get_watermark_offsets(self, tp, timeout=None):
        return self.marks[tp.partition]

    def offsets_for_times(self, tps, timeout=None):
        return [TopicPartition(tp.topic, tp.partition, self.times[tp.partition]) for tp in tps]


def test_tail_topic_prints_and_reports_undecodable_messages():
    codec = alert_codec("alerts", wire_format="schemaless")
    good = [(FINGERPRINT_HEADER, ALERT_FP.encode())]
    messages = [
        FakeMessage(serialize_alert(make_test_alert(0)), 5, 1, good),
        FakeMessage(b"\x00\x01garbage", 6, 1, good),
        FakeMessage(serialize_alert(make_test_alert(1)), 7, 1, [(FINGERPRINT_HEADER, b"0" * 16)]),
        FakeMessage(None, 0, 0, error=KafkaError(KafkaError._PARTITION_EOF)),
        FakeMessage(serialize_alert(make_test_alert(2)), 8, 0, good),
    ]
    consumer = FakeConsumer(messages)
    out, err = io.StringIO(), io.StringIO()
    stats = tail_topic(
        consumer,
        "alerts",
        {0: 8, 1: 5},
        deserialize=codec.deserialize,
        idle_timeout=0.05,
        out=out,
        err=err,
    )
    assert consumer.assigned == [(0, 8), (1, 5)]
    assert (stats.printed, stats.failed) == (2, 2)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("alerts[1]@5  diaSourceId=1099511627776")
    assert lines[1].startswith("alerts[0]@8  diaSourceId=1099511627778")
    errors = err.getvalue().splitlines()
    assert errors[0].startswith("alerts[1]@6: cannot decode: ")
    assert (
        "alerts[1]@7: cannot decode: message was written with schema fingerprint 0000" in errors[1]
    )


def test_tail_topic_json_carries_the_position_and_max_stops():
    codec = alert_codec("alerts", wire_format="schemaless")
    hdr = list(codec.headers)
    messages = [FakeMessage(serialize_alert(make_test_alert(i)), i, 0, hdr) for i in range(5)]
    out = io.StringIO()
    stats = tail_topic(
        FakeConsumer(messages),
        "alerts",
        {0: 0},
        deserialize=codec.deserialize,
        as_json=True,
        max_alerts=2,
        out=out,
        err=io.StringIO(),
    )
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert stats.printed == 2 and [r["_where"] for r in rows] == ["alerts[0]@0", "alerts[0]@1"]


# -- positions ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("earliest", Position("earliest")),
        ("LATEST", Position("latest")),
        ("42", Position("offset", 42)),
        ("-10", Position("offset", -10)),
        ("2026-11-25T09:10:00Z", Position("time", 1795597800000)),
        ("2026-11-25T09:10:00", Position("time", 1795597800000)),
        ("2026-11-25T10:10:00.250+01:00", Position("time", 1795597800250)),
    ],
)
def test_parse_position(text, want):
    assert parse_position(text) == want


def test_parse_position_time_matches_datetime():
    ts = datetime(2026, 11, 25, 9, 10, tzinfo=UTC).timestamp() * 1000
    assert parse_position("2026-11-25T09:10:00Z").value == int(ts)
    assert str(parse_position("2026-11-25T09:10:00Z")) == "2026-11-25T09:10:00.000+00:00"


def test_parse_position_rejects_garbage():
    with pytest.raises(
        ValueError, match="earliest, latest, an offset or an ISO-8601 time; got 'soon'"
    ):
        parse_position("soon")


def test_parse_position_rejects_empty():
    with pytest.raises(ValueError, match="got ''"):
        parse_position("")


def test_parse_position_rejects_before_epoch():
    with pytest.raises(ValueError, match="after 1970-01-01"):
        parse_position("1960-01-01T00:00:00Z")


def test_partition_ranges_for_each_kind():
    consumer = FakeConsumer(marks={0: (0, 10), 1: (4, 6)}, times={0: 7, 1: -1})
    get = lambda start, end=None: partition_ranges(consumer, "alerts", start, end)  # noqa: E731
    assert get(Position("earliest")) == {0: (0, 10), 1: (4, 6)}
    assert get(Position("latest")) == {0: (10, 10), 1: (6, 6)}
    assert get(Position("offset", 5)) == {0: (5, 10), 1: (5, 6)}
    assert get(Position("offset", 2)) == {0: (2, 10), 1: (4, 6)}  # clamped to the low mark
    assert get(Position("offset", -3)) == {0: (7, 10), 1: (4, 6)}
    # -1 from offsets_for_times: nothing at or after that time in the partition
    assert get(Position("time", 1)) == {0: (7, 10), 1: (6, 6)}
    assert get(Position("earliest"), Position("offset", 8)) == {0: (0, 8), 1: (4, 6)}
    assert get(Position("offset", 9), Position("offset", 3)) == {0: (9, 9), 1: (6, 6)}


# -- progress and summary -------------------------------------------------------------------
def test_progress_lines_are_printed_when_not_a_tty():
    out = io.StringIO()
    p = Progress(4, unit="events", stream=out, every_s=0)
    p.update()
    p.update(3)
    p.finish()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("replay: 1/4 events (25%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("replay: 4/4 events (100%), ") and lines[-1].endswith("ETA 0 s")


def test_summary_table():
    stats = ReplayStats(
        mode="events",
        source="ev",
        output="out",
        group_id="g1",
        read=5,
        done=3,
        no_work=1,
        failed=1,
        alerts=12,
        seconds=2.0,
    )
    stats.partitions = {
        0: PartitionStats(0, 3, read=3, alerts=12),
        1: PartitionStats(4, 6, 2, 0, 1),
    }
    text = summary_table(stats)
    lines = text.splitlines()
    assert lines[0] == "replay (events) ev -> out, group g1"
    assert lines[1].split() == ["partition", "start", "end", "read", "alerts", "failed"]
    assert lines[3].split() == ["0", "0", "3", "3", "12", "0"]
    assert lines[4].split() == ["1", "4", "6", "2", "0", "1"]
    assert lines[6].split() == ["total", "5", "12", "1"]
    assert lines[7] == "5 events in 2.0 s (2.50/s): done 3, no work 1, failed 1"

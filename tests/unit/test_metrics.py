"""Prometheus metrics (stream.ops.metrics) and structured logs (stream.ops.logs).

The worker test drives the real :class:`stream.transport.service.Worker` and ``run_loop`` (with a
fake
transport and a fake pipeline) so the counters are checked against what the worker did, both
in the registry and over HTTP.
"""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from collections import deque
from types import SimpleNamespace

import pytest

from diffstream.stream.ops.errors import NoWorkFound
from diffstream.stream.ops.logs import JsonFormatter, event_logger, setup_logging, where
from diffstream.stream.ops.metrics import PrometheusMetrics, start_metrics
from diffstream.stream.ops.settings import Settings
from diffstream.stream.transport.events import encode_event, make_event
from diffstream.stream.transport.service import SourceMessage, Worker, run_loop
from tests.unit.test_wire import make_test_alert

pytestmark = pytest.mark.unit


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
        assert resp.status == 200
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text format (KeyError if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, rest = metric.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if base == name and got == want:
            return float(value)
    raise KeyError(f"{name}{{{want}}} not in the exposition")


# -- the hook methods -----------------------------------------------------------------------
def test_hooks_update_the_metrics():
    m = PrometheusMetrics()
    m.on_consumed()
    m.on_consumed()
    m.on_processed({"imageDifference": 1.5, "imageDifference.zogy": 0.75})
    m.on_dead_letter("bad_event")
    m.on_dead_letter("bad_event")
    m.on_dead_letter("bad_exposure")
    m.on_no_work()
    m.on_alerts_published(7, 2.5)
    m.on_alerts_published(0, 0.5)
    m.on_lag(2, 11)
    m.on_lag(0, -3)  # clamped: a lag is never negative
    m.on_warmup(1.75, True)
    assert m.value("diffstream_events_consumed_total") == 2
    assert m.value("diffstream_events_processed_total") == 1
    assert m.value("diffstream_events_dead_lettered_total", kind="bad_event") == 2
    assert m.value("diffstream_events_dead_lettered_total", kind="bad_exposure") == 1
    assert m.value("diffstream_events_no_work_total") == 1
    assert m.value("diffstream_alerts_published_total") == 7
    assert m.value("diffstream_step_duration_seconds_count", step="imageDifference.zogy") == 1
    assert m.value("diffstream_step_duration_seconds_sum", step="imageDifference") == 1.5
    assert m.value("diffstream_event_to_alert_seconds_count") == 2
    assert m.value("diffstream_event_to_alert_seconds_sum") == 3.0
    assert m.value("diffstream_event_to_alert_seconds_bucket", le="2.0") == 1
    assert m.value("diffstream_consumer_lag", partition="2") == 11
    assert m.value("diffstream_consumer_lag", partition="0") == 0
    assert m.value("diffstream_last_event_timestamp_seconds") > 1.6e9
    assert m.value("diffstream_warmup_seconds", ok="true") == 1.75


def test_hooks_never_raise(caplog):
    m = PrometheusMetrics()
    with caplog.at_level(logging.WARNING, logger="diffstream.metrics"):
        m.on_processed({"step": "not a number"})
        m.on_processed({"step": "again"})
        m.on_lag("x", "y")
        m.on_warmup("slow", True)
    assert m.value("diffstream_events_processed_total") == 2  # counted before the bad timing
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "on_processed failed" in w]) == 1  # once per method
    assert any("on_lag failed" in w for w in warnings)
    assert any("on_warmup failed" in w for w in warnings)


def test_each_instance_has_its_own_registry():
    a, b = PrometheusMetrics(), PrometheusMetrics()
    a.on_consumed()
    assert a.value("diffstream_events_consumed_total") == 1
    assert b.value("diffstream_events_consumed_total") == 0


def test_render_is_the_text_exposition():
    m = PrometheusMetrics()
    m.on_alerts_published(3, 1.0)
    text = m.render().decode()
    assert "# TYPE diffstream_alerts_published_total counter" in text
    assert sample(text, "diffstream_alerts_published_total") == 3
    assert 'diffstream_build_info{version="0.1.0"} 1.0' in text


# -- serving --------------------------------------------------------------------------------
def test_serve_over_http_and_close():
    m = start_metrics(0)
    try:
        port = m.port
        assert port and port > 0
        m.on_consumed()
        assert sample(scrape(port), "diffstream_events_consumed_total") == 1
    finally:
        m.close()
    assert m.port is None
    with pytest.raises(OSError):
        scrape(port)


def test_start_metrics_without_port_serves_nothing():
    m = start_metrics(None)
    assert m.port is None
    m.close()  # harmless


def test_serve_rejects_a_bad_port():
    with pytest.raises(
        ValueError, match="metrics port must be an integer in \\[0, 65535\\], got 70000"
    ):
        PrometheusMetrics().serve(70000)


def test_serve_twice_is_refused():
    m = start_metrics(0)
    try:
        with pytest.raises(RuntimeError, match="already served on port"):
            m.serve(0)
    finally:
        m.close()


# -- against the real worker loop -----------------------------------------------------------
class FakeTransport:
    def __init__(self, messages):
        self.messages = deque(messages)
        self.delivered = []

    def poll(self, timeout):
        return self.messages.popleft() if self.messages else None

    def deliver(self, outcome):
        self.delivered.append(outcome)
        return True

    def close(self):
        pass


def test_counters_match_what_the_worker_did(tmp_path):
    for name in ("sci.fits", "tmpl.fits", "nowork.fits"):
        (tmp_path / name).write_bytes(b"")
    per_event = 3

    def fake_subtract(
        science, template, *, settings, visit, detector, exposure_id, metadata, **external
    ):  # science_psf, template_psf, science_background
        with metadata.timer("zogy"):
            if science.endswith("nowork.fits"):
                raise NoWorkFound("template covers 1% < required 10%")
        return SimpleNamespace(alerts=[make_test_alert(i) for i in range(per_event)])

    def event(sci, offset):
        value = encode_event(
            make_event(
                str(tmp_path / sci),
                str(tmp_path / "tmpl.fits"),
                visit=1,
                detector=2,
                exposure_id=offset,
                request_id=f"r{offset}",
            )
        )
        return SourceMessage(value=value, topic="in", partition=offset % 2, offset=offset)

    messages = [
        event("sci.fits", 0),
        event("sci.fits", 1),
        event("nowork.fits", 2),
        SourceMessage(value=b"garbage", topic="in", partition=1, offset=3),
        event("/elsewhere/x.fits", 4),  # outside the data root
        event("sci.fits", 5),
    ]
    metrics = start_metrics(0)
    try:
        worker = Worker(
            Settings(data_roots=[str(tmp_path)]), metrics=metrics, subtract=fake_subtract
        )
        stats = run_loop(worker, FakeTransport(messages), exit_when_idle=0.01, poll_timeout=0)
        text = scrape(metrics.port)
    finally:
        metrics.close()
    assert (stats.done, stats.no_work, stats.failed) == (3, 1, 2)
    assert sample(text, "diffstream_events_consumed_total") == 6
    assert sample(text, "diffstream_events_processed_total") == 4  # pipeline ran: done + no work
    assert sample(text, "diffstream_events_no_work_total") == 1
    assert sample(text, "diffstream_events_dead_lettered_total", kind="bad_event") == 2
    assert sample(text, "diffstream_alerts_published_total") == 3 * per_event == stats.alerts
    assert sample(text, "diffstream_event_to_alert_seconds_count") == 3
    assert sample(text, "diffstream_step_duration_seconds_count", step="imageDifference") == 4
    assert sample(text, "diffstream_step_duration_seconds_count", step="imageDifference.zogy") == 4


# -- logs -----------------------------------------------------------------------------------
def _json_line(logger_name: str, emit) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_json_line_takes_position_from_the_message_prefix():
    rec = _json_line(
        "t.prefix", lambda log: log.warning("%s: dead-lettered (%s)", where("in", 2, 41), "x")
    )
    assert rec["msg"] == "in[2]@41: dead-lettered (x)"
    assert (rec["topic"], rec["partition"], rec["offset"]) == ("in", 2, 41)
    assert rec["level"] == "WARNING" and rec["logger"] == "t.prefix"
    assert rec["ts"].endswith("Z")


def test_event_logger_adds_prefix_and_fields():
    rec = _json_line(
        "t.adapter",
        lambda log: event_logger(log, "alerts", 0, 7, visit=5).info("published %d", 3),
    )
    assert rec["msg"] == "alerts[0]@7: published 3"
    assert rec["topic"] == "alerts" and rec["offset"] == 7 and rec["visit"] == 5
    assert rec["where"] == "alerts[0]@7"


def test_json_line_without_position_has_no_event_fields():
    rec = _json_line("t.plain", lambda log: log.info("worker started"))
    assert "topic" not in rec and rec["msg"] == "worker started"


def test_setup_logging_text_and_json():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        out = io.StringIO()
        setup_logging(json_lines=True, stream=out)
        logging.getLogger("diffstream.x").info("%s: hello", where("t", 1, 2))
        assert json.loads(out.getvalue())["partition"] == 1
        out = io.StringIO()
        setup_logging(json_lines=False, stream=out)
        logging.getLogger("diffstream.x").info("%s: hello", where("t", 1, 2))
        assert out.getvalue().rstrip().endswith("INFO diffstream.x: t[1]@2: hello")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])

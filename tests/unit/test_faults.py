"""Operations under faults (issue 16), unit tier: fatal client states, the worker-state gauge
and /healthz, idle meaning "no lag", the per-event and status lines, rate-limited librdkafka
lines.  The same behaviours on a real broker: tests/integration/test_stream_faults.py."""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque

import pytest
from confluent_kafka import KafkaError

import diffstream.stream.transport.kafka as kt
from diffstream.stream.ops.logs import RepeatFilter
from diffstream.stream.ops.metrics import PrometheusMetrics, start_metrics
from diffstream.stream.ops.settings import Settings
from diffstream.stream.transport.outcomes import SourceMessage
from diffstream.stream.transport.service import Worker, run_loop

pytestmark = pytest.mark.unit


# -- fatal client states --------------------------------------------------------------------
def test_a_consumer_fatal_event_is_fatal_although_its_flag_says_not():
    # What librdkafka hands the consumer after "Static consumer fenced by other consumer with
    # same group.instance.id" (confluent-kafka 2.16): code _FATAL, fatal() False.
    err = KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced")
    assert not err.fatal()
    assert kt.is_fatal(err)


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.PRODUCER_FENCED,
    ],
)
def test_authentication_and_fencing_codes_are_fatal(code):
    assert kt.is_fatal(KafkaError(code))


@pytest.mark.parametrize("code", [KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN])
def test_a_broker_outage_is_not_fatal(code):
    assert not kt.is_fatal(KafkaError(code))


class _FatalMsg:
    def error(self):
        return KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced")


class _Stub:
    def __init__(self, msg=None):
        self.msg = msg

    def poll(self, timeout):
        return self.msg


def _bare_transport(metrics, consumer_msg=None):
    t = object.__new__(kt.KafkaTransport)  # no clients: both are stubs
    t.settings = Settings(group_id="g", instance_id="w-1")
    t.metrics = metrics
    t._assigned = {("exposures", 0)}
    t._in_hand = None
    t.consumer = _Stub(consumer_msg)
    t.producer = _Stub()
    return t


def test_poll_raises_on_a_fatal_consumer_event_and_reports_the_state(caplog):
    metrics = PrometheusMetrics()
    t = _bare_transport(metrics, _FatalMsg())
    with pytest.raises(kt.FatalKafkaError, match="Static consumer fenced"):
        t.poll(0)
    assert t.state == "fatal"
    assert metrics.value("diffstream_worker_state", state="fatal") == 1
    assert metrics.value("diffstream_worker_state", state="assigned") == 0
    # One CRITICAL line that says what to do.
    crit = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(crit) == 1 and "--instance-id" in crit[0].getMessage()
    # Every later poll raises too: the worker cannot carry on by accident.
    t.consumer = _Stub(None)
    with pytest.raises(kt.FatalKafkaError):
        t.poll(0)


def test_the_error_callback_records_a_fatal_error_for_the_next_poll():
    t = _bare_transport(PrometheusMetrics())
    t._on_error(KafkaError(KafkaError.PRODUCER_FENCED, "fenced", fatal=True))
    with pytest.raises(kt.FatalKafkaError, match="fenced"):
        t.poll(0)


def test_a_fatal_transport_is_never_idle():
    t = _bare_transport(PrometheusMetrics())
    t._group_lag, t._group_lag_at = 0, time.monotonic()
    assert t.idle()
    t._mark_fatal(KafkaError(KafkaError._FATAL, "x"))
    assert not t.idle()


def test_a_stale_or_unknown_group_lag_is_not_idle():
    t = _bare_transport(PrometheusMetrics())
    t._group_lag, t._group_lag_at = None, time.monotonic()
    assert not t.idle()
    t._group_lag, t._group_lag_at = 0, time.monotonic() - 60
    assert not t.idle()
    t._group_lag, t._group_lag_at = 3, time.monotonic()
    assert not t.idle()


def test_default_session_timeout_is_short_and_overridable():
    s = Settings(bootstrap_servers="b:1", data_roots=["/d"])
    consumer, _ = kt.client_configs(s)
    assert consumer["session.timeout.ms"] == kt.SESSION_TIMEOUT_MS <= 10000
    assert consumer["heartbeat.interval.ms"] * 3 <= consumer["session.timeout.ms"]
    s2 = s.model_copy(update={"kafka": {"session.timeout.ms": "45000"}})
    assert kt.client_configs(s2)[0]["session.timeout.ms"] == "45000"


# -- health ---------------------------------------------------------------------------------
def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own server
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_turns_unhealthy_when_waiting_with_lag_or_fatal():
    m = start_metrics(0, unhealthy_after_s=0.2)
    try:
        url = f"http://127.0.0.1:{m.port}/healthz"
        assert _get(url) == (200, "ok\n")  # waiting, but not for long yet
        time.sleep(0.3)
        status, text = _get(url)  # waiting 0.3 s > 0.2 s, lag unknown
        assert status == 503 and "no partition assigned" in text and "unknown" in text
        m.on_group_lag(0)  # nothing to do: more workers than partitions is fine
        assert _get(url)[0] == 200
        m.on_group_lag(5)
        status, text = _get(url)
        assert status == 503 and "group lag is 5" in text
        m.on_state("assigned")
        assert _get(url)[0] == 200
        m.on_state("fatal")
        status, text = _get(url)
        assert status == 503 and "fatal" in text
        assert m.value("diffstream_worker_state", state="fatal") == 1
        assert m.value("diffstream_group_lag") == 5
        # /metrics is still served beside it.
        assert _get(f"http://127.0.0.1:{m.port}/metrics")[0] == 200
    finally:
        m.close()


# -- idle means no lag ----------------------------------------------------------------------
class _IdleAfter:
    """No messages; ``idle()`` False for the first ``busy_polls`` polls (a worker waiting for
    its partitions while events are pending), True after."""

    def __init__(self, busy_polls):
        self.busy_polls = busy_polls
        self.polls = 0

    def poll(self, timeout):
        self.polls += 1
        time.sleep(timeout)
        return None

    def idle(self):
        return self.polls > self.busy_polls

    def deliver(self, outcome):
        raise AssertionError("nothing to deliver")

    def close(self):
        pass


def test_exit_when_idle_counts_only_time_the_transport_calls_idle(tmp_path):
    worker = Worker(Settings(data_roots=[str(tmp_path)]), subtract=lambda *a, **k: None)
    t = _IdleAfter(busy_polls=20)  # 20 x 10 ms not idle, far beyond exit_when_idle
    t0 = time.monotonic()
    stats = run_loop(worker, t, exit_when_idle=0.05, poll_timeout=0.01)
    assert stats.stopped_by == "idle"
    assert t.polls > 20  # it did not exit while the transport had work pending
    assert time.monotonic() - t0 >= 0.2 + 0.05


# -- logs -----------------------------------------------------------------------------------
class _OneBad:
    def __init__(self):
        self.queue = deque([SourceMessage(value=b"junk", topic="exposures", partition=2,
                                          offset=41)])  # fmt: skip
        self.status_calls = 0

    def poll(self, timeout):
        return self.queue.popleft() if self.queue else None

    def deliver(self, outcome):
        return True

    def close(self):
        pass

    def status_text(self):
        self.status_calls += 1
        return "assigned, partitions [2], group lag 0"


def test_one_info_line_per_event_and_a_status_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="diffstream.service")
    worker = Worker(Settings(data_roots=[str(tmp_path)]), subtract=lambda *a, **k: None)
    t = _OneBad()
    run_loop(worker, t, exit_when_idle=0.05, poll_timeout=0.01, status_interval=0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "diffstream.service"]
    event = [x for x in lines if x.startswith("exposures[2]@41: failed")]
    assert len(event) == 1, lines
    assert "bad_event" in event[0] and "dead-lettered" in event[0] and "committed" in event[0]
    status = [x for x in lines if x.startswith("status: ")]
    assert status and "group lag 0" in status[-1] and t.status_calls >= 1


def test_repeat_filter_lets_one_line_through_and_counts_the_rest():
    logger = logging.getLogger("diffstream.test.repeats")
    logger.propagate = False
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    f = RepeatFilter(window_s=60.0)
    logger.addFilter(f)
    try:
        for i in range(80):  # one broker outage: same text, other numbers
            logger.warning("127.0.0.1:%d/1: Connect failed (after %dms in state CONNECT)", 19200, i)
        logger.warning("another error")
        assert len(seen) == 2
        f.flush(older_than_s=0)
        assert len(seen) == 3 and "79 similar lines suppressed" in seen[-1]
    finally:
        logger.removeFilter(f)
        logger.removeHandler(handler)


def test_repeat_filter_is_thread_safe_enough():
    f = RepeatFilter(window_s=60.0)
    rec = logging.makeLogRecord({"msg": "broker down 1", "levelno": 30, "name": "x"})
    passed = []

    def hammer():
        for _ in range(200):
            passed.append(f.filter(logging.makeLogRecord(vars(rec))))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert passed.count(True) == 1


# -- sharp edges ----------------------------------------------------------------------------
def test_check_takes_the_workers_topic_flags():
    from diffstream.stream.cli.main import build_parser, settings_from

    args = build_parser().parse_args(
        ["check", "--input-topic", "ev", "--output-topic", "al", "--dlq-topic", "dl",
         "--metadata-topic", "md"]
    )  # fmt: skip
    s = settings_from(args)
    assert (s.input_topic, s.output_topic, s.dlq_topic, s.metadata_topic) == (
        "ev", "al", "dl", "md"
    )  # fmt: skip


def test_run_takes_log_json():
    from diffstream.stream.cli.main import build_parser, settings_from

    args = build_parser().parse_args(["run", "--log-json", "--data-root", "/d"])
    assert settings_from(args).log_json is True


def test_broker_down_reports_are_counted_but_assignment_lines_never(caplog):
    caplog.set_level(logging.INFO, logger="diffstream")
    kt.REPEATS.flush(older_than_s=0)
    t = _bare_transport(PrometheusMetrics())
    for i in range(40):
        text = f"127.0.0.1:{19200 + i % 2}/1: Connect failed"
        t._on_error(KafkaError(KafkaError._TRANSPORT, text))
    for _ in range(3):
        t._on_assign(None, [])
    texts = [r.getMessage() for r in caplog.records]
    assert sum("Connect failed" in x for x in texts) == 1
    assert sum(x.startswith("assigned") for x in texts) == 3
    kt.REPEATS.flush(older_than_s=0)
    assert "39 similar lines suppressed" in caplog.records[-1].getMessage()

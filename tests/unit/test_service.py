"""The transport-agnostic worker: outcomes for good, bad and no-work events, the error policy,
the metrics hook, run_loop's stop conditions, and the Kafka client configuration."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

import pytest

from diffstream.stream.alerts.packets import deserialize_alert
from diffstream.stream.ops.errors import (
    ApdbUnavailable,
    BadExposure,
    ConfigError,
    DiffstreamError,
    NoWorkFound,
)
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.subtract import subtract_files
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from diffstream.stream.transport.events import encode_event, make_event
from diffstream.stream.transport.kafka import client_configs
from diffstream.stream.transport.records import decode_dead_letter, decode_summary
from diffstream.stream.transport.service import (
    ALERT_FINGERPRINT,
    ErrorAction,
    Outcome,
    SourceMessage,
    StopProcessing,
    Worker,
    run_loop,
)
from diffstream.stream.transport.wire import FramedAlertSerializer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    pair = simulate_pair(seed=11, shape=(256, 256), n_stars=60, n_transients=8)
    write_pair(pair, root / "p")
    return root


@pytest.fixture(scope="module")
def real_result(pair_dir):
    return subtract_files(
        str(pair_dir / "p" / "science.fits"), str(pair_dir / "p" / "template.fits"),
        settings=Settings(), visit=5, detector=7, exposure_id=99,
    )  # fmt: skip


class Recorder:
    """Metrics that remember every call."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *a: self.calls.append((name, *a))

    def names(self):
        return [c[0] for c in self.calls]


def _msg(value, offset=3):
    return SourceMessage(value=value, topic="in", partition=1, offset=offset, key=b"k",
                         headers=(("h", b"v"),))  # fmt: skip


def _event_bytes(root, sci="p/science.fits", tmpl="p/template.fits", **kw):
    base = dict(visit=5, detector=7, exposure_id=99, request_id="req-1")
    base.update(kw)
    return encode_event(make_event(str(root / sci), str(root / tmpl), **base))


def _worker(root, subtract=None, **kw):
    return Worker(Settings(data_roots=[str(root)]), subtract=subtract, worker="test:1", **kw)


# -- good events ----------------------------------------------------------------------------
def test_done_outcome_alerts_match_offline_subtract(pair_dir, real_result):
    metrics = Recorder()
    out = _worker(pair_dir, metrics=metrics).process(_msg(_event_bytes(pair_dir)))
    assert out.status == "done" and out.dead_letter is None
    want = {a["diaSourceId"]: a["diaSource"]["psfFlux"] for a in real_result.alerts}
    got = {}
    for rec in out.alert_records:
        alert = deserialize_alert(rec.value)
        assert rec.key == str(alert["diaSourceId"]).encode()
        got[alert["diaSourceId"]] = alert["diaSource"]["psfFlux"]
        headers = dict(rec.headers)
        assert headers["diffstream.visit"] == b"5" and headers["diffstream.detector"] == b"7"
        assert headers["diffstream.schema.fingerprint"] == ALERT_FINGERPRINT.encode()
        assert headers["diffstream.pipeline.version"] == b"0.1.0"
        assert headers["diffstream.requestId"] == b"req-1"
    assert got == want and len(got) > 0
    summary = decode_summary(out.summary.value)
    assert summary == out.summary_record
    assert summary["status"] == "done" and summary["nAlerts"] == len(want)
    assert summary["nDiaSources"] == len(want) and summary["reason"] is None
    assert summary["configHash"] == real_result.summary["configHash"]
    assert {"imageDifference", "imageDifference.load", "imageDifference.zogy"} <= set(
        summary["timings"]
    )
    assert "imageDifference:zogy.wallTime" in summary["taskMetadataJson"]
    assert (summary["topic"], summary["partition"], summary["offset"]) == ("in", 1, 3)
    assert metrics.names() == ["on_consumed", "on_processed"]
    assert "imageDifference.zogy" in metrics.calls[1][1]
    # Our own serializer (unframed) has no schema id; Rubin's id is still named.
    assert summary["alertSchemaId"] is None and summary["rubinSchemaId"] == 1101


def test_summary_maps_a_registry_id_to_rubins(pair_dir):
    """A registry that cannot hold Rubin's id frames alerts with its own: the summary names
    both, so a reader keyed on Rubin's ids knows the mapping."""
    framed = FramedAlertSerializer(ensure=lambda: 7)  # as ensure_rubin_schema answers
    out = _worker(pair_dir, alert_serializer=framed).process(_msg(_event_bytes(pair_dir)))
    assert out.status == "done" and out.alert_records
    assert {rec.value[1:5] for rec in out.alert_records} == {(7).to_bytes(4, "big")}
    summary = decode_summary(out.summary.value)
    assert (summary["alertSchemaId"], summary["rubinSchemaId"]) == (7, 1101)


def test_event_exposure_bits_change_the_ids(pair_dir, real_result):
    out = _worker(pair_dir).process(_msg(_event_bytes(pair_dir, exposure_bits=20)))
    ids = sorted(deserialize_alert(r.value)["diaSourceId"] for r in out.alert_records)
    assert ids[0] >> (63 - 20) == 99  # the exposure id sits in the top 20 of 63 bits
    assert ids != sorted(a["diaSourceId"] for a in real_result.alerts)


# -- bad input: each ends as a dead letter with its reason ----------------------------------
def _dead(out: Outcome):
    assert out.status == "failed" and out.dead_letter is not None
    rec = decode_dead_letter(out.dead_letter.value)
    assert rec == out.dead_letter_record
    assert (rec["topic"], rec["partition"], rec["offset"]) == ("in", 1, 3)
    assert rec["originalKey"] == b"k"
    assert rec["originalHeaders"] == [{"key": "h", "value": b"v"}]
    assert decode_summary(out.summary.value)["status"] == "failed"
    return rec


def _never(*a, **k):
    raise AssertionError("subtract must not run for this event")


def test_undecodable_event_is_dead_lettered_with_its_bytes(pair_dir):
    out = _worker(pair_dir, subtract=_never).process(_msg(b"\x00not an event"))
    rec = _dead(out)
    assert rec["originalValue"] == b"\x00not an event"
    assert (rec["stage"], rec["kind"], rec["error"]) == ("consume", "bad_event", "BadEvent")
    assert '"reason": "undecodable"' in rec["fieldsJson"] and rec["requestId"] is None


def test_path_outside_roots_is_refused_before_opening(pair_dir, tmp_path):
    outside = tmp_path / "elsewhere.fits"
    data = encode_event(make_event(str(outside), str(pair_dir / "p/template.fits"), visit=1,
                                   detector=1, exposure_id=1, request_id="r-out"))  # fmt: skip
    rec = _dead(_worker(pair_dir, subtract=_never).process(_msg(data)))
    assert (rec["stage"], rec["kind"], rec["error"]) == ("consume", "bad_event", "PathNotAllowed")
    assert "outside every data root" in rec["message"] and rec["requestId"] == "r-out"
    assert '"field": "scienceLocation"' in rec["fieldsJson"]
    assert '"reason": "outside_roots"' in rec["fieldsJson"]


def test_optional_locations_are_checked_too(pair_dir):
    data = _event_bytes(pair_dir, background="/etc/passwd")
    rec = _dead(_worker(pair_dir, subtract=_never).process(_msg(data)))
    assert rec["error"] == "PathNotAllowed" and '"field": "backgroundLocation"' in rec["fieldsJson"]


def test_missing_file_is_a_bad_exposure(pair_dir):
    rec = _dead(_worker(pair_dir).process(_msg(_event_bytes(pair_dir, sci="p/nope.fits"))))
    assert (rec["stage"], rec["kind"], rec["error"]) == ("process", "bad_exposure", "BadExposure")
    assert "file not found" in rec["message"] and '"reason": "missing"' in rec["fieldsJson"]


def test_corrupt_file_is_a_bad_exposure(pair_dir):
    (pair_dir / "p" / "corrupt.fits").write_bytes(b"SIMPLE  =                    T" + b"\x00" * 50)
    rec = _dead(_worker(pair_dir).process(_msg(_event_bytes(pair_dir, sci="p/corrupt.fits"))))
    assert rec["kind"] == "bad_exposure"


def test_image_over_the_size_limit_is_a_bad_exposure(pair_dir):
    w = Worker(Settings(data_roots=[str(pair_dir)], max_pixels=1000), worker="t:1")
    rec = _dead(w.process(_msg(_event_bytes(pair_dir))))
    assert rec["kind"] == "bad_exposure" and "1000" in rec["message"]


def test_unexpected_exception_becomes_a_kernel_failure(pair_dir):
    def boom(*a, **k):
        raise ZeroDivisionError("oops")

    metrics = Recorder()
    out = _worker(pair_dir, subtract=boom, metrics=metrics).process(_msg(_event_bytes(pair_dir)))
    rec = _dead(out)
    assert (rec["kind"], rec["error"]) == ("kernel_failure", "KernelFailure")
    assert "unexpected ZeroDivisionError: oops" in rec["message"]
    assert metrics.names() == ["on_consumed"]


def test_no_work_is_a_summary_not_a_dead_letter(pair_dir):
    def no_work(*a, metadata, **k):
        metadata.set("templateCoverage", 0.04, step=metadata.name)
        raise NoWorkFound("template covers 4.0% < required 10%", coverage=0.04)

    metrics = Recorder()
    out = _worker(pair_dir, subtract=no_work, metrics=metrics).process(_msg(_event_bytes(pair_dir)))
    assert out.status == "no_work" and out.dead_letter is None and out.alert_records == []
    s = decode_summary(out.summary.value)
    assert s["reason"]["kind"] == "no_work" and "4.0% < required 10%" in s["reason"]["message"]
    assert s["templateCoverage"] == pytest.approx(0.04) and s["requestId"] == "req-1"
    assert metrics.names() == ["on_consumed", "on_processed"]


# -- the error policy -----------------------------------------------------------------------
def test_policy_stop_raises_and_skip_publishes_no_dead_letter(pair_dir):
    seen = []

    def stop(msg, err: DiffstreamError):
        seen.append((msg.where, err.kind))
        return ErrorAction.STOP

    with pytest.raises(StopProcessing, match=r"in\[1\]@3: stopped on BadEvent"):
        _worker(pair_dir, error_policy=stop).process(_msg(b"junk"))
    assert seen == [("in[1]@3", "bad_event")]
    out = _worker(pair_dir, error_policy=lambda m, e: ErrorAction.SKIP).process(_msg(b"junk"))
    assert out.status == "failed" and out.dead_letter is None
    assert decode_summary(out.summary.value)["reason"]["kind"] == "bad_event"


def test_worker_requires_a_data_root():
    with pytest.raises(ConfigError, match="needs at least one data root"):
        Worker(Settings())


# -- run_loop -------------------------------------------------------------------------------
class ListTransport:
    def __init__(self, messages, *, commit=True):
        self.queue = deque(messages)
        self.delivered: list[Outcome] = []
        self.commit = commit
        self.closed = False

    def poll(self, timeout):
        return self.queue.popleft() if self.queue else None

    def deliver(self, outcome):
        self.delivered.append(outcome)
        return self.commit

    def close(self):
        self.closed = True


def _fast_worker(root, real_result, metrics=None):
    return _worker(root, subtract=lambda *a, **k: real_result, metrics=metrics)


def test_run_loop_counts_outcomes_and_reports_metrics(pair_dir, real_result):
    msgs = [_msg(_event_bytes(pair_dir), 0), _msg(b"bad", 1), _msg(_event_bytes(pair_dir), 2)]
    metrics = Recorder()
    t = ListTransport(msgs)
    stats = run_loop(_fast_worker(pair_dir, real_result, metrics), t, exit_when_idle=0.01,
                     poll_timeout=0.0)  # fmt: skip
    n = len(real_result.alerts)
    assert (stats.consumed, stats.committed, stats.done, stats.failed) == (3, 3, 2, 1)
    assert stats.alerts == 2 * n and stats.stopped_by == "idle"
    published = [c for c in metrics.calls if c[0] == "on_alerts_published"]
    assert [c[1] for c in published] == [n, n] and all(c[2] >= 0 for c in published)
    assert ("on_dead_letter", "bad_event") in metrics.calls


def test_run_loop_stops_after_max_messages(pair_dir, real_result):
    t = ListTransport([_msg(_event_bytes(pair_dir), i) for i in range(5)])
    stats = run_loop(_fast_worker(pair_dir, real_result), t, max_messages=2, poll_timeout=0.0)
    assert stats.committed == 2 and len(t.queue) == 3 and stats.stopped_by == "max_messages"


def test_run_loop_finishes_the_event_in_hand_when_stopped(pair_dir, real_result):
    stop = threading.Event()
    worker = _fast_worker(pair_dir, real_result)
    process = worker.process

    def process_then_signal(msg):
        stop.set()  # the signal arrives while the event is being processed
        return process(msg)

    worker.process = process_then_signal  # type: ignore[method-assign]
    t = ListTransport([_msg(_event_bytes(pair_dir), i) for i in range(3)])
    stats = run_loop(worker, t, stop=stop, poll_timeout=0.0)
    assert len(t.delivered) == 1 and stats.committed == 1 and stats.stopped_by == "signal"


def test_run_loop_counts_uncommitted_deliveries(pair_dir, real_result):
    t = ListTransport([_msg(_event_bytes(pair_dir), 0)], commit=False)
    metrics = Recorder()
    stats = run_loop(_fast_worker(pair_dir, real_result, metrics), t, exit_when_idle=0.01,
                     poll_timeout=0.0)  # fmt: skip
    assert (stats.committed, stats.not_committed) == (0, 1)
    assert "on_alerts_published" not in metrics.names()


class WaitingTransport(ListTransport):
    """A ListTransport with the optional hooks run_loop uses while a dependency is down."""

    def __init__(self, messages, *, on_wait=None):
        super().__init__(messages)
        self.waited: list[float] = []
        self.given_up = 0
        self.on_wait = on_wait

    def wait_in_hand(self, seconds):
        self.waited.append(seconds)
        time.sleep(seconds)
        return True if self.on_wait is None else self.on_wait()

    def give_up_in_hand(self):
        self.given_up += 1


def _apdb_down_for(n_failures, real_result):
    calls = []

    def subtract(*a, **k):
        calls.append(1)
        if len(calls) <= n_failures:
            raise ApdbUnavailable("cannot open the APDB at postgresql://x: connection refused")
        return real_result

    return subtract, calls


def test_down_apdb_is_retried_with_back_off_not_dead_lettered(pair_dir, real_result, caplog):
    subtract, calls = _apdb_down_for(3, real_result)
    metrics = Recorder()
    t = WaitingTransport([_msg(_event_bytes(pair_dir), 0)])
    worker = _worker(pair_dir, subtract=subtract, metrics=metrics)
    with caplog.at_level("WARNING", logger="diffstream.service"):
        stats = run_loop(worker, t, exit_when_idle=0.01, poll_timeout=0.0,
                         retry_backoff=(0.01, 0.02))  # fmt: skip
    assert len(calls) == 4 and stats.retries == 3
    assert (stats.consumed, stats.committed, stats.done, stats.failed) == (1, 1, 1, 0)
    assert [o.status for o in t.delivered] == ["done"] and t.delivered[0].dead_letter is None
    assert [c for c in metrics.calls if c[0] == "on_retry"] == [("on_retry", "apdb")] * 3
    assert "on_dead_letter" not in metrics.names()
    assert metrics.names().count("on_consumed") == 1  # one event, however many attempts
    # Back-off: the schedule's values in turn, the last one repeated, waited through the
    # transport (which keeps its group alive meanwhile), not slept away.
    assert sum(t.waited) == pytest.approx(0.01 + 0.02 + 0.02, abs=5e-3)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3 and all("apdb is down (not bad input" in w for w in warnings)
    assert "attempt 3, processing it again in 0.0 s" in warnings[-1]


def test_a_retriable_error_never_reaches_the_error_policy(pair_dir, real_result):
    seen = []
    subtract, _ = _apdb_down_for(1, real_result)
    worker = _worker(pair_dir, subtract=subtract,
                     error_policy=lambda m, e: seen.append(e) or ErrorAction.STOP)  # fmt: skip
    out = worker.process(_msg(_event_bytes(pair_dir)))
    assert out.status == "retry" and out.dead_letter is None and out.error["kind"] == "apdb"
    assert seen == []


def test_stop_while_the_apdb_is_down_leaves_the_event_uncommitted(pair_dir, real_result):
    stop = threading.Event()
    subtract, calls = _apdb_down_for(10**6, real_result)

    def signal_on_second_wait():
        if len(t.waited) >= 2:
            stop.set()
        return True

    t = WaitingTransport([_msg(_event_bytes(pair_dir), 0)], on_wait=signal_on_second_wait)
    stats = run_loop(_worker(pair_dir, subtract=subtract), t, stop=stop, poll_timeout=0.0,
                     retry_backoff=(0.01,))  # fmt: skip
    assert t.delivered == [] and t.given_up == 1 and stats.stopped_by == "signal"
    assert (stats.committed, stats.not_committed, stats.retries) == (0, 1, 2)
    assert len(calls) == 2


def test_partition_lost_while_waiting_gives_the_event_up(pair_dir, real_result):
    subtract, calls = _apdb_down_for(10**6, real_result)
    t = WaitingTransport([_msg(_event_bytes(pair_dir), 0)], on_wait=lambda: False)
    stats = run_loop(_worker(pair_dir, subtract=subtract), t, exit_when_idle=0.01,
                     poll_timeout=0.0, retry_backoff=(0.01,))  # fmt: skip
    assert t.delivered == [] and t.given_up == 1 and len(calls) == 1
    assert (stats.committed, stats.not_committed) == (0, 1)


def test_bad_exposure_error_fields_survive(pair_dir):
    def bad(*a, **k):
        raise BadExposure("WCS does not overlap", path="/x.fits", reason="wcs_mismatch")

    rec = _dead(_worker(pair_dir, subtract=bad).process(_msg(_event_bytes(pair_dir))))
    assert '"reason": "wcs_mismatch"' in rec["fieldsJson"] and "/x.fits" in rec["message"]


# -- Kafka client configuration -------------------------------------------------------------
def _kafka_settings(**kw):
    return Settings(bootstrap_servers="b:9092", data_roots=["/d"], **kw)


def test_client_configs_pass_every_property_through():
    extra = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN", "fetch.min.bytes": "7"}
    consumer, producer = client_configs(_kafka_settings(kafka=extra), worker="h:1")
    for conf in (consumer, producer):
        assert {k: conf[k] for k in extra} == extra
        assert conf["bootstrap.servers"] == "b:9092"
    assert consumer["enable.auto.commit"] == "false"
    assert consumer["enable.auto.offset.store"] == "false"
    assert consumer["isolation.level"] == "read_committed"
    assert producer["enable.idempotence"] is True and "transactional.id" not in producer


def test_client_configs_secret_password_and_instance_id():
    secret = "hunter2"  # noqa: S105 - a test value, not a credential
    s = _kafka_settings(sasl_password=secret, instance_id="w1", exactly_once=True)
    consumer, producer = client_configs(s, worker="h:1")
    assert consumer["sasl.password"] == producer["sasl.password"] == "hunter2"
    assert consumer["group.instance.id"] == "w1"
    assert producer["transactional.id"] == "diffstream-diffstream-w1"
    assert "hunter2" not in repr(s)
    _, p2 = client_configs(_kafka_settings(exactly_once=True), worker="host:42")
    assert p2["transactional.id"] == "diffstream-diffstream-host-42"


@pytest.mark.parametrize("key", ["enable.auto.commit", "enable.auto.offset.store"])
def test_client_configs_refuse_early_commits(key):
    with pytest.raises(ConfigError, match=f"-X {key}=true would commit offsets before"):
        client_configs(_kafka_settings(kafka={key: "true"}))


def test_client_configs_refuse_transactional_id_without_exactly_once():
    with pytest.raises(ConfigError, match="transactional.id is only used with --exactly-once"):
        client_configs(_kafka_settings(kafka={"transactional.id": "x"}))


def test_client_configs_need_bootstrap_servers():
    with pytest.raises(ConfigError, match="needs bootstrap servers"):
        client_configs(Settings())


def test_consumer_and_transactional_producer_keep_their_brokers_known():
    # librdkafka #5511/#5456: after re-bootstrapping, a cached coordinator on a decommissioned
    # broker hangs send_offsets_to_transaction and the consumer's commits after an outage
    # (tests/integration/test_stream_broker_restart.py); -X can still choose otherwise.
    consumer, producer = client_configs(_kafka_settings(exactly_once=True))
    assert producer["metadata.recovery.strategy"] == "none"
    assert consumer["metadata.recovery.strategy"] == "none"
    consumer, alo = client_configs(_kafka_settings())
    assert consumer["metadata.recovery.strategy"] == "none"
    assert "metadata.recovery.strategy" not in alo
    extra = {"metadata.recovery.strategy": "rebootstrap"}
    consumer, chosen = client_configs(_kafka_settings(exactly_once=True, kafka=extra))
    assert chosen["metadata.recovery.strategy"] == "rebootstrap"
    assert consumer["metadata.recovery.strategy"] == "rebootstrap"


def test_optional_locations_reach_the_pipeline_resolved(pair_dir, real_result):
    seen = {}

    def capture(*a, **k):
        seen.update(k)
        return real_result

    data = _event_bytes(pair_dir, science_psf=str(pair_dir / "p" / ".." / "p" / "psf.fits"),
                        background=str(pair_dir / "p" / "bkg.fits"))  # fmt: skip
    out = _worker(pair_dir, subtract=capture).process(_msg(data))
    assert out.status == "done"
    assert seen["science_psf"] == str((pair_dir / "p" / "psf.fits").resolve())
    assert seen["science_background"] == str((pair_dir / "p" / "bkg.fits").resolve())
    assert seen["template_psf"] is None
    assert (seen["visit"], seen["detector"], seen["exposure_id"]) == (5, 7, 99)


def test_injected_codecs_decode_events_and_encode_alerts(pair_dir, real_result):
    event = make_event(str(pair_dir / "p/science.fits"), str(pair_dir / "p/template.fits"),
                       visit=5, detector=7, exposure_id=99, request_id="r-codec")  # fmt: skip
    ctxs = []

    def decoder(data, ctx):
        ctxs.append(ctx)
        if data != b"framed":
            from diffstream.stream.ops.errors import BadEvent

            raise BadEvent("not framed", reason="undecodable")
        return event

    def serializer(alert, ctx):
        return b"A%d" % alert["diaSourceId"]

    w = Worker(Settings(data_roots=[str(pair_dir)]), subtract=lambda *a, **k: real_result,
               event_decoder=decoder, alert_serializer=serializer)  # fmt: skip
    out = w.process(_msg(b"framed"))
    assert out.status == "done" and ctxs[0].where == "in[1]@3"  # the message is the context
    assert [r.value for r in out.alert_records] == [
        b"A%d" % a["diaSourceId"] for a in real_result.alerts
    ]
    rec = _dead(w.process(_msg(b"plain")))
    assert rec["message"] == "not framed"


def test_host_share_sets_each_events_cpus_unless_the_operator_did(pair_dir, real_result, tmp_path):
    from diffstream.stream.ops.cpus import HostShare

    seen = []

    def capture(*a, settings, **k):
        seen.append(settings)
        return real_result

    with HostShare(cpus=4, directory=tmp_path) as mine, HostShare(cpus=4, directory=tmp_path):
        w = _worker(pair_dir, subtract=capture, host_share=mine)
        out = w.process(_msg(_event_bytes(pair_dir)))
        assert out.status == "done"
        assert (seen[-1].cpus, seen[-1].threads()) == (2, 2)  # two workers on 4 CPUs
        assert '"imageDifference.cpuShareWorkers": 2' in out.summary_record["taskMetadataJson"]
        assert w.settings.cpus is None  # the worker's own settings are not changed
        # An operator's cpus always wins over the share.
        op = Worker(Settings(data_roots=[str(pair_dir)], cpus=3), subtract=capture,
                    worker="test:2", host_share=mine)  # fmt: skip
        op.process(_msg(_event_bytes(pair_dir)))
        assert seen[-1].cpus == 3
    w.process(_msg(_event_bytes(pair_dir)))  # the other slot is gone: the whole host again
    assert seen[-1].cpus == 4

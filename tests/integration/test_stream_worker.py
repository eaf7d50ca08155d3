"""``diffstream run`` on a real broker: consumer groups, exactly-once, kill -9, dead letters,
SIGTERM.  Workers are real subprocesses (``python -m stream.cli.main run``); the expected alerts
come from an offline ``subtract_files`` of the same simulated pairs with the same ids.

The broker-restart test lives in test_stream_broker_restart.py (it needs a broker of its own).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from diffstream.stream.alerts.packets import LSST_SCHEMA, schema_fingerprint
from diffstream.stream.transport.events import EVENT_FINGERPRINT, encode_event, make_event
from tests.integration.stream_helpers import (
    REPO,
    WAIT_S,
    Workers,
    alerts_by_id,
    check_alert_matches_offline,
    committed_offsets,
    dead_letters,
    event_values,
    make_pairs,
    new_topics,
    publish,
    read_all,
    wait_group_stable,
    wait_summaries,
)

N_EVENTS = 20
PARTITIONS = 3
MODES = [pytest.param([], id="at-least-once"), pytest.param(["--exactly-once"], id="exactly-once")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("stream-data")


@pytest.fixture(scope="module")
def pairs(data_root):
    return make_pairs(data_root, N_EVENTS)


@pytest.fixture
def workers(tmp_path, kafka_bootstrap, make_topic, data_root):
    w = Workers(tmp_path, kafka_bootstrap, new_topics(make_topic, PARTITIONS), data_root)
    yield w
    w.cleanup()


def _expected(pairs):
    return {sid: alert for p in pairs for sid, alert in p.alerts.items()}


def _check_alerts(bootstrap, topic, pairs, *, exactly_once: bool, isolation="read_committed"):
    got = alerts_by_id(read_all(bootstrap, topic, isolation))
    want = _expected(pairs)
    missing = sorted(set(want) - set(got))
    assert not missing, f"{len(missing)} alerts lost, e.g. {missing[:3]}"
    assert set(got) == set(want), f"unexpected alerts {sorted(set(got) - set(want))[:3]}"
    if exactly_once:
        dups = {sid: len(v) for sid, v in got.items() if len(v) > 1}
        assert not dups, f"{len(dups)} alerts duplicated under --exactly-once"
    fp = schema_fingerprint(LSST_SCHEMA).encode()  # Rubin-framed: the official schema
    for sid, copies in got.items():
        for alert, headers in copies:
            check_alert_matches_offline(alert, want[sid], headers)
            src = alert["diaSource"]
            assert headers["diffstream.visit"] == str(src["visit"]).encode()
            assert headers["diffstream.detector"] == str(src["detector"]).encode()
            assert headers["diffstream.schema.fingerprint"] == fp
            assert headers["diffstream.pipeline.version"] == b"0.1.0"
    return got


@pytest.mark.parametrize("mode", MODES)
def test_group_of_two_workers_delivers_every_alert(kafka_bootstrap, workers, pairs, mode):
    t0 = time.monotonic()
    t = workers.topics
    procs = [workers.start(*mode), workers.start(*mode)]
    wait_group_stable(kafka_bootstrap, t["group"], 2)
    publish(kafka_bootstrap, t["input"], event_values(pairs), partitions=PARTITIONS)
    summaries = wait_summaries(kafka_bootstrap, t["metadata"], N_EVENTS, procs=procs)
    codes = [p.stop() for p in procs]
    assert codes == [0, 0], [p.tail() for p in procs]
    assert {s["status"] for s in summaries} == {"done"}
    assert len({s["workerId"] for s in summaries}) == 2, "both group members processed events"
    by_req = {s["requestId"]: s for s in summaries}
    for p in pairs:
        s = by_req[f"req-{p.exposure_id}"]
        assert s["nAlerts"] == len(p.alerts) and s["exposureId"] == p.exposure_id
        assert s["timings"]["imageDifference"] > 0
    _check_alerts(kafka_bootstrap, t["alerts"], pairs, exactly_once=bool(mode))
    assert committed_offsets(kafka_bootstrap, t["group"], t["input"], PARTITIONS) == {
        p: len(range(p, N_EVENTS, PARTITIONS)) for p in range(PARTITIONS)
    }
    print(f"group run ({mode or 'at-least-once'}): {time.monotonic() - t0:.1f} s")


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_mid_event_then_restart_loses_nothing(kafka_bootstrap, workers, pairs, mode):
    t = workers.topics
    few = pairs[:6]
    publish(kafka_bootstrap, t["input"], event_values(few), partitions=PARTITIONS)
    # The pause holds the worker after the event's alerts are acknowledged (inside the open
    # transaction with --exactly-once) and before its offset is committed: kill -9 there.
    first = workers.start("--instance-id", "w1", *mode, pause=30)
    first.wait_for_line("fault injection: pausing")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(WAIT_S)
    # The killed event's alerts really are in the log (committed or not): the kill was mid-event.
    assert read_all(kafka_bootstrap, t["alerts"], "read_uncommitted")
    second = workers.start("--instance-id", "w1", *mode)
    wait_summaries(kafka_bootstrap, t["metadata"], len(few), procs=[second])
    assert second.stop() == 0, second.tail()
    got = _check_alerts(kafka_bootstrap, t["alerts"], few, exactly_once=bool(mode))
    raw = alerts_by_id(read_all(kafka_bootstrap, t["alerts"], "read_uncommitted"))
    # The killed event was redone: its alerts were written twice, and only with
    # --exactly-once does a read_committed reader see them once.
    assert any(len(v) > 1 for v in raw.values()), "the kill did not hit an event in progress"
    if not mode:
        assert any(len(v) > 1 for v in got.values())


def test_bad_events_go_to_the_dead_letter_topic(kafka_bootstrap, workers, pairs, data_root):
    t = workers.topics
    good = pairs[6:9]
    root_pair = pairs[0]
    ours = bytes.fromhex(EVENT_FINGERPRINT)
    bad = {
        "malformed": b'{"visit": 1, "not": "avro"}',
        "unknown schema": b"\xc3\x01" + bytes(8) + b"\x02",
        "garbled": b"\xc3\x01" + ours + b"\xff" * 12,
        "missing file": encode_event(make_event(
            str(data_root / "nope" / "science.fits"), str(root_pair.template), visit=1,
            detector=1, exposure_id=1, request_id="req-missing")),
        "outside the roots": encode_event(make_event(
            "/etc/hostname", str(root_pair.template), visit=1, detector=1, exposure_id=2,
            request_id="req-outside")),
    }  # fmt: skip
    expect = {  # name -> (stage, kind, error, a piece of fieldsJson or message)
        "malformed": ("consume", "bad_event", "BadEvent", '"reason": "undecodable"'),
        "unknown schema": ("consume", "bad_event", "BadEvent", '"reason": "unknown_schema"'),
        "garbled": ("consume", "bad_event", "BadEvent", '"reason": "undecodable"'),
        "missing file": ("process", "bad_exposure", "BadExposure", "file not found"),
        "outside the roots": ("consume", "bad_event", "PathNotAllowed", "outside every data root"),
    }
    values = event_values(good[:2]) + list(bad.values())
    positions = publish(kafka_bootstrap, t["input"], values, partitions=1)
    proc = workers.start()
    # The third good event through the operator command, while the worker runs.
    pub = subprocess.run(
        [sys.executable, "-m", "diffstream.stream.cli.main", "publish-event", str(good[2].science),
         str(good[2].template), "--bootstrap-servers", kafka_bootstrap, "--topic", t["input"],
         "--visit", str(good[2].visit), "--detector", str(good[2].detector),
         "--exposure-id", str(good[2].exposure_id)],
        cwd=REPO, capture_output=True, text=True, timeout=WAIT_S, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("DIFFSTREAM_")},
    )  # fmt: skip
    assert pub.returncode == 0, pub.stderr
    assert f"-> {t['input']}[0]@{len(values)}" in pub.stdout
    summaries = wait_summaries(kafka_bootstrap, t["metadata"], len(values) + 1, procs=[proc])
    assert proc.stop() == 0, proc.tail()

    assert sorted(s["status"] for s in summaries) == ["done"] * 3 + ["failed"] * len(bad)
    letters = {d["offset"]: d for d in dead_letters(kafka_bootstrap, t["dlq"])}
    assert len(letters) == len(bad)
    for (name, value), (part, off) in zip(bad.items(), positions[2:], strict=True):
        d = letters[off]
        assert (d["topic"], d["partition"], d["originalValue"]) == (t["input"], part, value)
        assert d["failedAt"] > 0 and d["workerId"] and d["message"]
        stage, kind, error, piece = expect[name]
        assert (d["stage"], d["kind"], d["error"]) == (stage, kind, error), name
        assert piece in d["fieldsJson"] + d["message"], (name, d)
    requests = {d["requestId"] for d in letters.values()}
    assert requests == {None, "req-missing", "req-outside"}
    _check_alerts(kafka_bootstrap, t["alerts"], good, exactly_once=False)
    assert committed_offsets(kafka_bootstrap, t["group"], t["input"], 1) == {0: len(values) + 1}


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_finishes_the_event_in_hand_and_commits(kafka_bootstrap, workers, pairs, mode):
    t = workers.topics
    few = pairs[9:12]
    publish(kafka_bootstrap, t["input"], event_values(few), partitions=1)
    proc = workers.start(*mode, pause=3)
    proc.wait_for_line("fault injection: pausing")
    proc.proc.send_signal(signal.SIGTERM)  # in the middle of the first event
    assert proc.proc.wait(WAIT_S) == 0, proc.tail()
    assert "SIGTERM: finishing the event in hand" in proc.text()
    # Exactly the event in hand was finished and committed; the next ones were left alone.
    assert committed_offsets(kafka_bootstrap, t["group"], t["input"], 1) == {0: 1}
    got = alerts_by_id(read_all(kafka_bootstrap, t["alerts"]))
    assert set(got) == set(few[0].alerts)
    assert all(len(v) == 1 for v in got.values())

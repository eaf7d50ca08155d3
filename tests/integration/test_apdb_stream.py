"""The APDB behind ``diffstream run`` on a real broker and a real PostgreSQL: a sequence of
visits gives alerts with diaObjects and histories, a replay re-runs association without new
rows, a kill -9 between the APDB commit and the alerts' commit (--exactly-once) leaves
alerts and APDB in agreement, and a PostgreSQL outage is waited out, never dead-lettered."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from diffstream.stream.pipeline.apdb.store import Apdb
from diffstream.stream.sim.sequence import simulate_sequence, write_sequence
from diffstream.stream.transport.events import encode_event, make_event
from tests.apdb_helpers import PG_LOCAL, apdb_url, free_port, pg_server  # noqa: F401
from tests.integration.stream_helpers import (
    WAIT_S,
    Workers,
    alerts_by_id,
    dead_letters,
    new_topics,
    publish,
    read_all,
    wait_summaries,
)

N_VISITS = 5


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("apdb-stream-data")


@pytest.fixture(scope="module")
def events(data_root):
    seq = simulate_sequence(seed=3, n_visits=N_VISITS, transient_visit=3)
    template, visits = write_sequence(seq, data_root / "seq")
    return [
        encode_event(
            make_event(
                str(path),
                str(template),
                visit=seq.visits[v].visit,
                detector=7,
                exposure_id=7000 + v,
                band="r",
                request_id=f"req-{v}",
            )  # fmt: skip
        )
        for v, path in enumerate(visits)
    ]


@pytest.fixture
def workers(tmp_path, kafka_bootstrap, make_topic, data_root):
    # One input partition: the visits are associated in the order they were taken.
    w = Workers(tmp_path, kafka_bootstrap, new_topics(make_topic, 1), data_root)
    yield w
    w.cleanup()


def _links(url: str) -> dict[int, int]:
    db = Apdb(url)
    t = db.tables["DiaSource"]
    with db.engine.connect() as conn:
        return dict(conn.execute(db.sa.select(t.c.diaSourceId, t.c.diaObjectId)).all())


def test_worker_fills_history_and_a_replay_adds_no_rows(kafka_bootstrap, workers, events, apdb_url):  # noqa: F811
    url = apdb_url("postgresql")
    t = workers.topics
    publish(kafka_bootstrap, t["input"], events, partitions=1)
    w = workers.start("--apdb", url, "--exactly-once")
    wait_summaries(kafka_bootstrap, t["metadata"], N_VISITS, procs=[w])
    assert w.stop() == 0, w.tail()
    first = alerts_by_id(read_all(kafka_bootstrap, t["alerts"]))
    before = Apdb(url).stats()
    assert before["DiaSource"] == len(first) > 0
    by_visit: dict[int, list[dict]] = {}
    for (alert, _), *_ in first.values():
        assert alert["diaObject"]["diaObjectId"] == alert["diaSource"]["diaObjectId"]
        by_visit.setdefault(alert["diaSource"]["visit"], []).append(alert)
    last = by_visit[max(by_visit)]
    # Variables are detected at every visit: their last alerts carry the four before.
    assert sum(len(a["prvDiaSources"]) == N_VISITS - 1 for a in last) >= 4
    assert all(len(a["prvDiaForcedSources"]) >= len(a["prvDiaSources"]) for a in last)

    # The replay: the same events again through a new worker.  --reprocess bypasses the
    # processed-exposure ledger (which would skip them as duplicates), so association and
    # forced photometry really run again, as a replay or a reprocessing does.
    publish(kafka_bootstrap, t["input"], events, partitions=1)
    w = workers.start("--apdb", url, "--exactly-once", "--reprocess")
    wait_summaries(kafka_bootstrap, t["metadata"], 2 * N_VISITS, procs=[w])
    assert w.stop() == 0, w.tail()
    after = Apdb(url).stats()
    assert (after["DiaObject"], after["DiaSource"]) == (before["DiaObject"], before["DiaSource"])
    # The reprocessing adds only precovery: every diaObject now has one forced measurement
    # on every visit (all cover the field), including those before it was first detected
    # (the transient's 3 visits before it appeared, and any object first seen later).
    assert after["DiaForcedSource"] - before["DiaForcedSource"] >= 3
    assert after["DiaForcedSource"] == after["DiaObject"] * N_VISITS
    both = alerts_by_id(read_all(kafka_bootstrap, t["alerts"]))
    for sid, copies in both.items():
        assert len(copies) == 2, f"alert {sid}: {len(copies)} copies"
        ids = {alert["diaObject"]["diaObjectId"] for alert, _ in copies}
        assert len(ids) == 1, f"alert {sid}: diaObjectIds {ids} differ between runs"


def test_kill_9_between_apdb_and_alert_commits_keeps_them_in_agreement(
    kafka_bootstrap,
    workers,
    events,
    apdb_url,  # noqa: F811
):
    url = apdb_url("postgresql")
    t = workers.topics
    publish(kafka_bootstrap, t["input"], events, partitions=1)
    # The pause holds the worker after the event's alerts are acknowledged, inside the open
    # transaction, before it commits: the APDB transaction has committed by then.
    first = workers.start("--instance-id", "w1", "--apdb", url, "--exactly-once", pause=30)
    first.wait_for_line("fault injection: pausing")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(WAIT_S)
    # The premise: the APDB holds the killed event's rows, its alerts are not committed.
    written = _links(url)
    assert written, "the kill came before the APDB commit"
    assert not read_all(kafka_bootstrap, t["alerts"], "read_committed")
    second = workers.start("--instance-id", "w1", "--apdb", url, "--exactly-once")
    wait_summaries(kafka_bootstrap, t["metadata"], N_VISITS, procs=[second])
    assert second.stop() == 0, second.tail()
    got = alerts_by_id(read_all(kafka_bootstrap, t["alerts"], "read_committed"))
    links = _links(url)
    # Agreement both ways: every committed alert is a stored diaSource with the same
    # diaObject, every stored diaSource has exactly one committed alert.
    assert set(got) == set(links)
    assert set(written) <= set(links) and all(links[s] == o for s, o in written.items())
    for sid, copies in got.items():
        assert len(copies) == 1
        alert = copies[0][0]
        assert alert["diaSource"]["diaObjectId"] == links[sid]
        for prv in alert["prvDiaSources"]:
            assert links[prv["diaSourceId"]] == links[sid]


@pytest.fixture
def own_pg(tmp_path):
    """A PostgreSQL server of this test alone (it is stopped and started again, which the
    session's shared server must not be): (url, pg) with ``pg("pause")``/``pg("resume")``."""
    env = {**os.environ, "PGPORT": str(free_port()), "PG_LOCAL_DIR": str(tmp_path / "pg")}

    def pg(command: str) -> str:
        run = subprocess.run(["bash", str(PG_LOCAL), command], env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, f"postgres-local.sh {command}: {run.stdout}{run.stderr}"
        return run.stdout.strip()

    pg("start")
    try:
        yield pg("url"), pg
    finally:
        subprocess.run(["bash", str(PG_LOCAL), "stop"], env=env, capture_output=True, timeout=120)


def test_apdb_outage_is_retried_not_dead_lettered(kafka_bootstrap, workers, events, own_pg):
    url, pg = own_pg
    t = workers.topics
    # max.poll.interval.ms 7 s < the outage: a worker that slept through it instead of
    # polling would be evicted from its group ("maximum poll interval exceeded").
    w = workers.start("--apdb", url, "-X", "max.poll.interval.ms=7000")
    publish(kafka_bootstrap, t["input"], events[:1], partitions=1)
    wait_summaries(kafka_bootstrap, t["metadata"], 1, procs=[w])  # the pool is open and warm
    pg("pause")
    down_at = time.monotonic()
    publish(kafka_bootstrap, t["input"], events[1:2], partitions=1)
    # Attempts at 0, 1, 3, 7 s and then 15 s: the fourth WARNING comes > 7 s into the outage.
    w.wait_for_line("apdb is down (not bad input: not dead-lettered, not committed), attempt 4")
    # The premise: the event really met the outage and has not gone anywhere meanwhile.
    assert time.monotonic() - down_at > 7.0
    assert len(wait_summaries(kafka_bootstrap, t["metadata"], 1, procs=[w])) == 1
    pg("resume")
    summaries = wait_summaries(kafka_bootstrap, t["metadata"], 2, procs=[w])
    assert w.stop() == 0, w.tail()
    assert sorted(s["status"] for s in summaries) == ["done", "done"]
    assert dead_letters(kafka_bootstrap, t["dlq"]) == []
    alerts = alerts_by_id(read_all(kafka_bootstrap, t["alerts"]))
    visit = {alert["diaSource"]["visit"] for (alert, _), *_ in alerts.values()}
    assert len(visit) == 2, f"alerts of visits {visit}"
    stored = Apdb(url).stats()
    assert stored["DiaSource"] == len(alerts)
    log = w.text()
    assert "maximum poll interval" not in log and "evicted" not in log.lower(), w.tail()
    retries = re.search(r"retries (\d+);", log)
    assert retries is not None and int(retries.group(1)) >= 4, w.tail()

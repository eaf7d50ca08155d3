"""The processed-exposures ledger's identity and in-memory view (stream.transport.ledger);
on a real broker: tests/integration/test_stream_faults.py (duplicated events)."""

from __future__ import annotations

import pytest

from diffstream.stream.ops.errors import NoWorkFound
from diffstream.stream.ops.settings import Settings, config_hash
from diffstream.stream.transport.events import make_event
from diffstream.stream.transport.ledger import (
    AlreadyProcessed,
    Ledger,
    event_fingerprint,
    ledger_key,
)
from diffstream.stream.transport.service import SourceMessage, Worker

pytestmark = pytest.mark.unit


def _event(**kw):
    base = dict(visit=5, detector=7, exposure_id=99, request_id="req-1")
    base.update(kw)
    return make_event("/d/s.fits", "/d/t.fits", **base)


def test_a_republished_event_has_the_same_fingerprint():
    a, b = _event(request_id="one"), _event(request_id="two")
    b["producedAt"] = a["producedAt"] + 60_000
    assert event_fingerprint(a) == event_fingerprint(b)


@pytest.mark.parametrize(
    "change",
    [{"visit": 6}, {"detector": 8}, {"exposure_id": 100}, {"band": "g"}],
)
def test_what_the_event_asks_for_changes_the_fingerprint(change):
    assert event_fingerprint(_event(**change)) != event_fingerprint(_event())


def test_other_files_change_the_fingerprint():
    other = _event()
    other["templateLocation"] = "/d/t2.fits"
    assert event_fingerprint(other) != event_fingerprint(_event())


def test_the_key_holds_group_and_config_hash():
    e = _event()
    h1 = config_hash(Settings().science_config())
    h2 = config_hash(Settings(detection_threshold=6.0).science_config())
    assert h1 != h2
    assert ledger_key("g", e, h1) != ledger_key("g", e, h2)
    assert ledger_key("g", e, h1) != ledger_key("h", e, h1)
    assert ledger_key("g", e, h1).startswith("g:")


def test_the_view_keeps_only_its_group_and_honours_tombstones():
    view = Ledger("g")
    view._take(b"g:abc:h", b'{"status": "done"}')
    view._take(b"other:abc:h", b'{"status": "done"}')
    view._take(b"g:bad:h", b"not json")
    assert len(view) == 1 and view.seen("g:abc:h") == {"status": "done"}
    view._take(b"g:abc:h", None)
    assert view.seen("g:abc:h") is None


def test_already_processed_is_no_work_not_a_failure():
    assert issubclass(AlreadyProcessed, NoWorkFound)


def test_the_worker_skips_what_the_ledger_lists_unless_reprocessing(tmp_path):
    from diffstream.stream.transport.events import encode_event

    (tmp_path / "d").mkdir()
    event = make_event(str(tmp_path / "d/s.fits"), str(tmp_path / "d/t.fits"), visit=5,
                       detector=7, exposure_id=99, request_id="req-1")  # fmt: skip
    settings = Settings(data_roots=[str(tmp_path)], group_id="g")
    calls = []

    def never(*a, **k):
        calls.append(1)
        raise AssertionError("the pipeline ran for a listed event")

    worker = Worker(settings, subtract=never, worker="test:1")
    worker.ledger = Ledger("g")
    key = ledger_key("g", event, config_hash(settings.science_config()))
    worker.ledger.add(key, {"status": "done", "nAlerts": 3, "topic": "in", "partition": 0,
                            "offset": 4, "workerId": "w:1"})  # fmt: skip
    msg = SourceMessage(value=encode_event(event), topic="in", partition=0, offset=9)
    out = worker.process(msg)
    assert out.status == "no_work" and out.ledger is None and not calls
    assert "already processed (done, 3 alerts) as in[0]@4 by w:1" in out.error["message"]
    forced = Worker(settings.model_copy(update={"reprocess": True}), subtract=never)
    forced.ledger = worker.ledger
    assert forced.process(msg).status == "failed" and calls  # it ran (and failed: no files)

"""Exposure events and the worker's own records: validation rules, single-object framing,
decoders that raise only BadEvent whatever the bytes."""

from __future__ import annotations

import io
import math

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffstream.schemas import fingerprint, load_parsed
from diffstream.stream.ops.errors import BadEvent
from diffstream.stream.transport.events import (
    EVENT_FINGERPRINT,
    EVENT_SCHEMA,
    SINGLE_OBJECT_MARKER,
    decode_event,
    encode_event,
    make_event,
    validate_event,
)
from diffstream.stream.transport.records import (
    DEADLETTER_FINGERPRINT,
    dead_letter_record,
    decode_dead_letter,
    decode_summary,
    encode_dead_letter,
    encode_summary,
)

pytestmark = pytest.mark.unit


def _event(**over):
    base = dict(
        visit=12, detector=3, exposure_id=77, request_id="r-1", produced_at_ms=1_700_000_000_000
    )
    base.update(over)
    return make_event("/data/sci.fits", "file:///data/tmpl.fits", **base)


# -- round trip and framing -----------------------------------------------------------------
def test_round_trip_keeps_every_field():
    ev = _event(band="r", midpoint_mjd_tai=60000.5, science_psf="/data/psf.fits")
    assert decode_event(encode_event(ev)) == ev


def test_single_object_framing_is_marker_fingerprint_then_plain_avro():
    ev = _event()
    data = encode_event(ev)
    assert data[:2] == SINGLE_OBJECT_MARKER == b"\xc3\x01"
    assert data[2:10] == bytes.fromhex(EVENT_FINGERPRINT)
    assert EVENT_FINGERPRINT == fingerprint(load_parsed("diffstream.event"))
    body = fastavro.schemaless_reader(io.BytesIO(data[10:]), EVENT_SCHEMA, EVENT_SCHEMA)
    assert body["requestId"] == "r-1" and body["exposureId"] == 77


def test_defaults_request_id_and_produced_at():
    a, b = (
        make_event("/a", "/b", visit=1, detector=0, exposure_id=1),
        make_event("/a", "/b", visit=1, detector=0, exposure_id=1),
    )
    assert a["requestId"] != b["requestId"] and len(a["requestId"]) == 36
    assert a["producedAt"] > 1_600_000_000_000


# -- validation: one test per rule ----------------------------------------------------------
@pytest.mark.parametrize(
    "over, match",
    [
        ({"request_id": ""}, r"requestId must be 1\.\.256 characters, got ''"),
        ({"request_id": "x" * 257}, r"requestId must be 1\.\.256"),
        ({"visit": -1}, r"visit must be in \[0, \d+\], got -1"),
        ({"visit": 1.5}, r"visit must be an integer, got 1\.5"),
        ({"visit": True}, r"visit must be an integer, got True"),
        ({"detector": 2**31}, r"detector must be in \[0, 2147483647\], got 2147483648"),
        ({"exposure_bits": 0}, r"exposureBits must be in \[1, 62\], got 0"),
        ({"exposure_bits": 63}, r"exposureBits must be in \[1, 62\], got 63"),
        ({"exposure_bits": 4, "exposure_id": 16}, r"exposureId must be in \[0, 15\], got 16"),
        ({"exposure_id": -2}, r"exposureId must be in \[0, \d+\], got -2"),
        ({"midpoint_mjd_tai": math.nan}, r"midpointMjdTai must be a finite number or null"),
        ({"band": "  "}, r"band must be a non-empty string or null"),
        ({"science_psf": ""}, r"sciencePsfLocation must be a non-empty path"),
        ({"background": "a\x00b"}, r"backgroundLocation must be at most 4096 characters"),
        ({"template_psf": "/" + "a" * 5000}, r"templatePsfLocation must be at most 4096"),
        ({"produced_at_ms": -5}, r"producedAt must be >= 0 ms, got -5"),
    ],
)
def test_each_rule_is_enforced(over, match):
    with pytest.raises(BadEvent, match=match) as info:
        _event(**over)
    assert info.value.kind == "bad_event" and info.value.fields["reason"] == "invalid"


def test_required_location_must_be_non_empty():
    with pytest.raises(BadEvent, match="scienceLocation must be a non-empty path"):
        make_event("", "/b", visit=1, detector=0, exposure_id=1)
    with pytest.raises(BadEvent, match="templateLocation must be a non-empty path"):
        make_event("/a", None, visit=1, detector=0, exposure_id=1)  # type: ignore[arg-type]


def test_missing_fields_and_non_records_are_refused():
    ev = _event()
    del ev["visit"]
    with pytest.raises(BadEvent, match=r"event lacks fields \['visit'\]"):
        validate_event(ev)
    with pytest.raises(BadEvent, match="event must be a record, got list"):
        validate_event([1, 2])  # type: ignore[arg-type]


def test_produced_at_must_be_a_time():
    ev = _event()
    ev["producedAt"] = "yesterday"
    with pytest.raises(BadEvent, match="producedAt must be ms since the epoch"):
        validate_event(ev)


# -- decoding bad bytes ---------------------------------------------------------------------
def test_tombstone_is_refused():
    with pytest.raises(BadEvent, match=r"must be bytes, got None \(a tombstone\)") as info:
        decode_event(None)
    assert info.value.fields["reason"] == "not_bytes"


def test_bytes_without_marker_are_undecodable():
    with pytest.raises(BadEvent, match="not Avro single-object encoded.*got 5 bytes") as info:
        decode_event(b'{"a":')
    assert info.value.fields["reason"] == "undecodable"


def test_unknown_fingerprint_is_unknown_schema():
    other = fastavro.parse_schema(
        {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}
    )
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, other, {"x": 1})
    data = SINGLE_OBJECT_MARKER + bytes.fromhex(fingerprint(other)) + buf.getvalue()
    with pytest.raises(BadEvent, match=f"unknown event schema fingerprint {fingerprint(other)}"):
        decode_event(data)


def test_truncated_body_is_undecodable():
    data = encode_event(_event())
    with pytest.raises(BadEvent, match="cannot decode") as info:
        decode_event(data[:-7])
    assert info.value.fields["reason"] == "undecodable"


def test_bytes_left_over_are_undecodable():
    data = encode_event(_event())
    with pytest.raises(BadEvent, match="3 of .* bytes are left over"):
        decode_event(data + b"abc")


def test_decoded_but_invalid_values_are_invalid():
    ev = _event()
    ev["exposureBits"] = 70  # encodable as an int, but not a valid bit count
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, EVENT_SCHEMA, ev)
    data = SINGLE_OBJECT_MARKER + bytes.fromhex(EVENT_FINGERPRINT) + buf.getvalue()
    with pytest.raises(BadEvent, match=r"exposureBits must be in \[1, 62\], got 70"):
        decode_event(data)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_bad_event(data):
    try:
        decode_event(data)
    except BadEvent:
        pass


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_body_after_our_header_raises_only_bad_event(body):
    try:
        decode_event(SINGLE_OBJECT_MARKER + bytes.fromhex(EVENT_FINGERPRINT) + body)
    except BadEvent:
        pass


_ids = st.integers(min_value=0, max_value=2**40 - 1)


@settings(max_examples=25, deadline=None)
@given(
    visit=_ids,
    detector=st.integers(min_value=0, max_value=2**31 - 1),
    exposure_id=_ids,
    band=st.none() | st.sampled_from("ugrizy"),
    mjd=st.none() | st.floats(min_value=50000, max_value=70000),
    loc=st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and "\x00" not in s),
)
def test_valid_events_round_trip(visit, detector, exposure_id, band, mjd, loc):
    ev = make_event(
        loc, loc, visit=visit, detector=detector, exposure_id=exposure_id, band=band,
        midpoint_mjd_tai=mjd,
    )  # fmt: skip
    assert decode_event(encode_event(ev)) == ev


# -- summaries and dead letters -------------------------------------------------------------
def _summary():
    return {
        "status": "no_work", "requestId": "r", "visit": 1, "detector": 2, "exposureId": 3,
        "topic": "t", "partition": 1, "offset": 9, "nAlerts": 0, "nDetections": None,
        "nDiaSources": None, "nPositive": None, "nNegative": None, "templateCoverage": 0.05,
        "timings": {"imageDifference": 0.5}, "reason": {"stage": "process", "kind": "no_work",
        "error": "NoWorkFound", "message": "template covers 5.0%", "fieldsJson": "{}"},
        "configHash": "ab", "versionsHash": "cd", "alertSchemaFingerprint": "00",
        "alertSchemaId": 7, "rubinSchemaId": 1101,
        "pipelineVersion": "0.1.0", "workerId": "h:1", "eventProducedAt": 1_700_000_000_123,
        "processedAt": 1_700_000_001_456, "notes": [], "taskMetadataJson": None,
    }  # fmt: skip


def test_summary_round_trip():
    s = _summary()
    assert decode_summary(encode_summary(s)) == s


def test_dead_letter_keeps_original_bytes_and_position():
    rec = dead_letter_record(
        value=b"\x00\xffgarbage", key=b"k", headers=[("h", b"v"), ("n", None)], topic="in",
        partition=2, offset=41, error={"stage": "consume", "kind": "bad_event",
        "error": "BadEvent", "message": "m", "fields": {"reason": "undecodable", "x": math.nan}},
        failed_at_ms=1_700_000_000_000,
    )  # fmt: skip
    data = encode_dead_letter(rec)
    assert data[2:10] == bytes.fromhex(DEADLETTER_FINGERPRINT)
    back = decode_dead_letter(data)
    assert back == rec
    assert back["originalValue"] == b"\x00\xffgarbage"
    assert back["originalHeaders"] == [{"key": "h", "value": b"v"}, {"key": "n", "value": None}]
    assert (back["topic"], back["partition"], back["offset"]) == ("in", 2, 41)
    assert '"reason": "undecodable"' in back["fieldsJson"]  # NaN kept as text, JSON valid


def test_record_decoders_refuse_the_wrong_record_type():
    with pytest.raises(ValueError, match="summary has schema fingerprint"):
        decode_summary(encode_dead_letter(dead_letter_record(
            value=b"", key=None, headers=[], topic="t", partition=0, offset=0,
            error={"stage": "consume", "kind": "bad_event", "error": "E", "message": "m"},
            failed_at_ms=0,
        )))  # fmt: skip

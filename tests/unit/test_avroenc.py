"""stream.alerts.avroenc against fastavro, the reference: the same bytes for every record,
and where a value is one the encoder leaves to fastavro, fastavro's bytes or fastavro's
error.  Records: alerts as the pipeline builds them (histories, diaObject, cutouts, task
metadata), and Hypothesis-drawn diaSources whose fields take odd values (numpy scalars,
NaN, infinities, ints past their type, bools in number fields, missing keys...)."""

from __future__ import annotations

import io
import math

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffstream.stream.alerts.avroenc import Encoder, encoder
from diffstream.stream.alerts.packets import (
    ALERT_SCHEMA,
    DIA_SOURCE_FIELDS,
    LSST_SCHEMA,
    dia_source_record,
    make_alert,
    read_alert_file,
    serialize_alert,
    write_alert_file,
)

EXPOSURE = {
    "visit": 2025061500123,
    "detector": 42,
    "midpoint_mjd_tai": 60841.1234567891,
    "band": "r",
    "time_processed_mjd_tai": 60841.1240001,
    "exposure_time": 30.0,
}
_DIA_SOURCE = next(f for f in ALERT_SCHEMA["fields"] if f["name"] == "diaSource")["type"]


def _row(i: int) -> dict:
    return {
        "diaSourceId": 1_000_000_000_000 + i,
        "x": 1021.37 + i,
        "y": 87.912,
        "xErr": 0.031,
        "ra": 150.123456789,
        "dec": -2.2345678901,
        "psfFlux": -1234.5 * (i + 1),
        "psfFluxErr": 56.7,
        "psfNdata": 441,
        "snr": 21.8,
        "apFlux": float("nan"),
        "isNegative": i % 2 == 1,
        "trailNdata": 0,
        "dipoleNdata": 3 * i,
        "bboxSize": 21 + i,
        "pixelFlags_saturatedCenter": True,
        "band": "r",
    }


def _alert(i: int, *, metadata: bool = True) -> dict:
    source = dia_source_record(_row(i), **EXPOSURE)
    meta = {
        "pipelineVersion": "0.1.0",
        "method": "zogy",
        "configHash": "3f2a9c0d11e4b7a8",
        "versionsHash": "9e01c2d3a4b5c6d7",
        "exposureId": 2025061500123,
        "visit": 2025061500123,
        "detector": 42,
        "timings": {"imageDifference.load": 0.125, "imageDifference.zogy": 1.5, "ü": 2.0},
        "nDiaSources": 3,
        "templateCoverage": 0.875,
        "scienceSha256": "a" * 64,
        "templateSha256": "b" * 64,
        "processedMjdTai": 60841.1240001,
    }
    cutouts = {"cutoutDifference": bytes(range(256)) * 40, "cutoutScience": b"S" * 90}
    prv = [dia_source_record(_row(i + 100 + k), **EXPOSURE) for k in range(i % 3)]
    return make_alert(source, cutouts=cutouts, task_metadata=meta if metadata else None,
                      prv_dia_sources=prv)  # fmt: skip


def _fastavro(schema, record) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _same_as_fastavro(schema, record) -> None:
    try:
        want = _fastavro(schema, record)
    except Exception as exc:  # the encoder must fail as fastavro does
        with pytest.raises(type(exc)):
            Encoder(schema).encode(record)
        return
    assert Encoder(schema).encode(record) == want


@pytest.mark.parametrize("metadata", [True, False])
def test_alerts_encode_as_fastavro_does(metadata):
    for i in range(5):
        alert = _alert(i, metadata=metadata)
        assert encoder(ALERT_SCHEMA).encode(alert) == _fastavro(ALERT_SCHEMA, alert)
        # The LSST schema has no diffstreamMetadata: the key is ignored, as fastavro does.
        assert encoder(LSST_SCHEMA).encode(alert) == _fastavro(LSST_SCHEMA, alert)


def test_the_encoder_writes_these_alerts_itself(monkeypatch):
    """Proves the premise of the test above: the bytes are the encoder's, not fastavro's."""

    def no_fastavro(*args, **kwargs):
        raise AssertionError("fastavro was called")

    monkeypatch.setattr(fastavro, "schemaless_writer", no_fastavro)
    assert Encoder(ALERT_SCHEMA).encode(_alert(2))


def test_file_and_serializer_share_the_encoder(tmp_path):
    alerts = [_alert(i) for i in range(7)]
    path = tmp_path / "a.avro"
    assert write_alert_file(path, alerts) == 7
    assert read_alert_file(path) == [fastavro.schemaless_reader(
        io.BytesIO(serialize_alert(a)), ALERT_SCHEMA) for a in alerts]  # fmt: skip


_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([3.4e38, 3.5e38, -1e39, 1e-46, 2**53 + 1, -0.0]),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.sampled_from([np.float32(1.5), np.float64(2.5), np.int64(7), np.bool_(True)]),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(DIA_SOURCE_FIELDS), _ODD, max_size=4),
    missing=st.lists(st.sampled_from(DIA_SOURCE_FIELDS), max_size=2),
    i=st.integers(0, 3),
)
def test_odd_dia_sources_encode_or_fail_as_fastavro(changes, missing, i):
    record = dia_source_record(_row(i), **EXPOSURE)
    record.update(changes)
    for name in missing:
        record.pop(name, None)
    _same_as_fastavro(_DIA_SOURCE, record)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ra", np.float64(1.25)),  # a numpy scalar: fastavro's bytes
        ("psfNdata", True),  # a bool in an int field: fastavro's error
        ("visit", 2**63),  # past a long: fastavro's error
        ("detector", 2**40),  # a required int past int32: fastavro writes it as a long
        ("snr", 1e39),  # past float32: fastavro writes inf
        ("snr", math.nan),
        ("x", 3),  # an int in a double field
        ("band", b"r"),
    ],
)
def test_values_left_to_fastavro(field, value):
    record = dia_source_record(_row(0), **EXPOSURE)
    record[field] = value
    _same_as_fastavro(_DIA_SOURCE, record)


def test_pieces_join_to_the_bytes_and_pass_cutouts_on_uncopied():
    alert = _alert(1)
    pieces = encoder(ALERT_SCHEMA).pieces(alert)
    assert b"".join(pieces) == _fastavro(ALERT_SCHEMA, alert)
    assert any(p is alert["cutoutDifference"] for p in pieces)  # the long one
    assert not any(p is alert["cutoutScience"] for p in pieces)  # 90 bytes: copied
    bad = {**alert, "diaSource": {**alert["diaSource"], "diaSourceId": "x"}}
    with pytest.raises((ValueError, TypeError)):
        encoder(ALERT_SCHEMA).pieces(bad)

"""Alert records, alerts and their Avro encodings (diffstream.stream.alerts.packets)."""

from __future__ import annotations

import functools
import io
import math
import re
import zlib
from pathlib import Path

import fastavro
import lsst.alert.packet as lsst_packet
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffstream.stream.alerts import packets as alerts_module
from diffstream.stream.alerts.avroenc import long_bytes
from diffstream.stream.alerts.packets import (
    ALERT_SCHEMA,
    DIA_SOURCE_FIELDS,
    DIA_SOURCE_REQUIRED,
    LSST_SCHEMA,
    TASK_METADATA_FIELDS,
    deserialize_alert,
    dia_source_batch,
    dia_source_record,
    make_alert,
    read_alert_file,
    serialize_alert,
    write_alert_file,
)

pytestmark = pytest.mark.unit

NAME = re.escape(ALERT_SCHEMA["name"])  # lsst.v11_1.alert

EXPOSURE = {
    "visit": 2025061500123,
    "detector": 42,
    "midpoint_mjd_tai": 60841.1234567891,
    "band": "r",
    "time_processed_mjd_tai": 60841.1240001,
    "exposure_time": 30.0,
}
# Fields the keywords set; the row must provide the other required ones.
KEYWORD_FIELDS = {"visit", "detector", "midpointMjdTai", "timeProcessedMjdTai"}
ROW_REQUIRED = [name for name in DIA_SOURCE_REQUIRED if name not in KEYWORD_FIELDS]


@pytest.fixture
def make_row():
    """Factory: a measurement row as the pipeline produces it (numpy scalars)."""

    def factory(index: int = 0, **overrides):
        row = {
            "diaSourceId": np.int64(1_000_000_000_000 + index),
            "x": np.float64(1021.37 + index),
            "y": np.float64(87.912),
            "xErr": np.float32(0.031),
            "yErr": np.float32(0.029),
            "ra": np.float64(150.123456789),
            "dec": np.float64(2.2345678901),
            "raErr": np.float32(1.1e-6),
            "decErr": np.float32(1.2e-6),
            "ra_dec_Cov": np.float32(1e-13),
            "psfFlux": np.float64(1234.5),
            "psfFluxErr": np.float64(56.7),
            "psfChi2": np.float64(401.2),
            "psfNdata": np.int32(441),
            "snr": np.float32(21.8),
            "apFlux": np.float64(np.nan),  # a failed measurement
            "scienceFlux": np.float64(5432.1),
            "templateFlux": np.float64(4197.6),
            "isNegative": np.bool_(False),
            "isDipole": np.bool_(False),
            "dipoleFitAttempted": False,
            "trailNdata": 0,
            "dipoleNdata": 0,
            "bboxSize": np.int64(21),
            "pixelFlags": np.bool_(False),
            "pixelFlags_edge": np.bool_(False),
            "pixelFlags_saturatedCenter": np.bool_(True),
            "centroid_flag": False,
            "psfFlux_flag": False,
        }
        row.update(overrides)
        return row

    return factory


@pytest.fixture
def make_metadata():
    """Factory: the compact TaskMetadata record."""

    def factory(**overrides):
        meta = {
            "pipelineVersion": "0.1.0",
            "method": "zogy",
            "configHash": "3f2a9c0d11e4b7a8",
            "versionsHash": "9e01c2d3a4b5c6d7",
            "exposureId": 2025061500123,
            "visit": 2025061500123,
            "detector": 42,
            "timings": {
                "imageDifference.load": 0.125,
                "imageDifference.warp": 1.5,
                "imageDifference.subtract": 2.25,
                "imageDifference.detectAndMeasure": 0.75,
            },
            "nDiaSources": 3,
            "templateCoverage": 0.875,
            "scienceSha256": "a" * 64,
            "templateSha256": "b" * 64,
            "processedMjdTai": 60841.1240001,
        }
        meta.update(overrides)
        return meta

    return factory


@pytest.fixture
def make_test_alert(make_row, make_metadata):
    def factory(index: int = 0, *, metadata: bool = True):
        source = dia_source_record(make_row(index), **EXPOSURE)
        cutouts = {
            "cutoutDifference": b"D" * 100,
            "cutoutScience": b"S" * 90,
            "cutoutTemplate": None,
        }
        return make_alert(
            source, cutouts=cutouts, task_metadata=make_metadata() if metadata else None
        )

    return factory


def without_metadata(alert: dict) -> dict:
    return {k: v for k, v in alert.items() if k != "diffstreamMetadata"}


# -- dia_source_record ----------------------------------------------------------------------
def test_dia_source_record_has_every_field_in_schema_order(make_row):
    rec = dia_source_record(make_row(), **EXPOSURE)
    assert list(rec) == list(DIA_SOURCE_FIELDS)
    assert len(rec) == 102
    assert rec["visit"] == EXPOSURE["visit"]
    assert rec["midpointMjdTai"] == EXPOSURE["midpoint_mjd_tai"]
    assert rec["band"] == "r"
    assert rec["exposureTime"] == 30.0
    # Fields we do not measure are None.
    for name in ("diaObjectId", "ssObjectId", "trailFlux", "reliability", "glint_trail"):
        assert rec[name] is None


def test_dia_source_record_converts_numpy_to_python_types(make_row):
    rec = dia_source_record(make_row(), **EXPOSURE)
    assert type(rec["diaSourceId"]) is int
    assert type(rec["psfNdata"]) is int
    assert type(rec["bboxSize"]) is int
    assert type(rec["ra"]) is float
    assert type(rec["psfFlux"]) is float
    assert type(rec["pixelFlags_saturatedCenter"]) is bool
    assert rec["pixelFlags_saturatedCenter"] is True
    assert rec["isNegative"] is False


def test_dia_source_record_nan_becomes_none_for_nullable(make_row):
    row = make_row(psfChi2=np.float32(np.nan), snr=float("inf"))
    rec = dia_source_record(row, **EXPOSURE)
    assert rec["apFlux"] is None
    assert rec["psfChi2"] is None
    assert rec["snr"] is None


def test_dia_source_record_rounds_float_fields_to_float32(make_row):
    rec = dia_source_record(make_row(), **EXPOSURE)
    # x is an Avro float: rounded to float32 now, so a decoded record equals this one.
    assert rec["x"] == float(np.float32(1021.37))
    assert rec["x"] != 1021.37
    # ra is an Avro double: kept at full precision.
    assert rec["ra"] == 150.123456789


@pytest.mark.parametrize("name", ROW_REQUIRED)
def test_dia_source_record_missing_required_field(make_row, name):
    row = make_row()
    del row[name]
    with pytest.raises(ValueError, match=f"'{name}' is required but missing"):
        dia_source_record(row, **EXPOSURE)


def test_dia_source_record_required_none(make_row):
    with pytest.raises(ValueError, match=r"'ra' is required \(double\), got None"):
        dia_source_record(make_row(ra=None), **EXPOSURE)


def test_dia_source_record_required_keyword_none(make_row):
    kwargs = {**EXPOSURE, "midpoint_mjd_tai": None}
    with pytest.raises(ValueError, match="'midpointMjdTai' is required"):
        dia_source_record(make_row(), **kwargs)


def test_dia_source_record_required_nan(make_row):
    with pytest.raises(ValueError, match="'x' is required and must be finite, got nan"):
        dia_source_record(make_row(x=np.float32(np.nan)), **EXPOSURE)


def test_dia_source_record_int_out_of_range(make_row):
    with pytest.raises(ValueError, match=r"'psfNdata' must fit int \[-2147483648"):
        dia_source_record(make_row(psfNdata=2**31), **EXPOSURE)


def test_dia_source_record_float32_overflow(make_row):
    with pytest.raises(ValueError, match="'psfFlux' must fit float32"):
        dia_source_record(make_row(psfFlux=1e39), **EXPOSURE)


def test_dia_source_record_float_type(make_row):
    with pytest.raises(TypeError, match="'psfFlux' must be a real number"):
        dia_source_record(make_row(psfFlux="12.5"), **EXPOSURE)


def test_dia_source_record_int_type(make_row):
    with pytest.raises(TypeError, match="'bboxSize' must be an integer"):
        dia_source_record(make_row(bboxSize=21.0), **EXPOSURE)
    with pytest.raises(TypeError, match="'psfNdata' must be an integer"):
        dia_source_record(make_row(psfNdata=True), **EXPOSURE)


def test_dia_source_record_bool_type(make_row):
    with pytest.raises(TypeError, match="'pixelFlags_edge' must be a boolean"):
        dia_source_record(make_row(pixelFlags_edge=1), **EXPOSURE)


def test_dia_source_record_string_type(make_row):
    with pytest.raises(TypeError, match="'band' must be a string"):
        dia_source_record(make_row(), **{**EXPOSURE, "band": 3})


def test_dia_source_record_unknown_key(make_row):
    with pytest.raises(ValueError, match=r"not LSST diaSource fields: \['psfflux'\]"):
        dia_source_record(make_row(psfflux=1.0), **EXPOSURE)


def test_dia_source_record_ignore_extra(make_row):
    rec = dia_source_record(make_row(scoreSnr=7.5), **EXPOSURE, ignore_extra=True)
    assert "scoreSnr" not in rec
    assert list(rec) == list(DIA_SOURCE_FIELDS)


def test_dia_source_record_row_contradicts_keyword(make_row):
    with pytest.raises(ValueError, match="row has detector=7 but the keyword detector=42"):
        dia_source_record(make_row(detector=7), **EXPOSURE)
    # Agreeing values are fine.
    rec = dia_source_record(make_row(detector=np.int16(42)), **EXPOSURE)
    assert rec["detector"] == 42


# -- dia_source_batch (the column-wise form) ------------------------------------------------
def _columns(rows):
    """Rows (dicts) as columns: numpy arrays where the values allow, else lists."""
    cols = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        arr = np.array(values) if all(v is not None for v in values) else None
        cols[key] = arr if arr is not None and arr.dtype.kind in "biuf" else values
    return cols


def _rows_with_variety(make_row, n=25):
    rng = np.random.default_rng(8)
    rows = []
    for i in range(n):
        row = make_row(i)
        # NaN in nullable floats, values that round in float32, extreme but valid numbers.
        row["psfFlux"] = np.float64(rng.normal(0, 1e4)) if i % 4 else np.float64(np.nan)
        row["snr"] = np.float32(rng.uniform(5, 50))
        row["xErr"] = np.float32(np.inf) if i % 7 == 3 else np.float32(rng.uniform(0, 1))
        row["scienceFlux"] = np.float64(3.4e38 if i == 5 else rng.normal(0, 1e3) / 3)
        row["isNegative"] = np.bool_(i % 2)
        row["bboxSize"] = np.int64(15 + i)
        row["isDipole"] = None if i % 3 else bool(i % 2)  # an object column (nullable bool)
        rows.append(row)
    return rows


def test_dia_source_batch_equals_per_row_records(make_row):
    rows = _rows_with_variety(make_row)
    expected = [dia_source_record(r, **EXPOSURE) for r in rows]
    got = dia_source_batch(_columns(rows), len(rows), **EXPOSURE)
    assert got == expected
    assert [list(g) for g in got] == [list(DIA_SOURCE_FIELDS)] * len(rows)
    # Same Python types too (== would let 1 == 1.0 and True == 1 pass).
    for g, e in zip(got, expected, strict=True):
        assert {k: type(v) for k, v in g.items()} == {k: type(v) for k, v in e.items()}
    assert dia_source_batch({}, 0, **EXPOSURE) == []


def test_dia_source_batch_ignore_extra_and_length_check(make_row):
    rows = [make_row(i, scoreSnr=7.5) for i in range(3)]
    got = dia_source_batch(_columns(rows), 3, **EXPOSURE, ignore_extra=True)
    assert got == [dia_source_record(r, **EXPOSURE, ignore_extra=True) for r in rows]
    with pytest.raises(ValueError, match=r"columns must all hold n=4 values, got \{'x': 3"):
        dia_source_batch({"x": np.zeros(3)}, 4, **EXPOSURE)


@pytest.mark.parametrize(
    ("change", "keywords"),
    [
        ({"ra": None}, {}),
        ({"x": np.float32(np.nan)}, {}),
        ({"psfNdata": 2**31}, {}),
        ({"psfFlux": 1e39}, {}),
        ({"psfFlux": "12.5"}, {}),
        ({"bboxSize": 21.0}, {}),
        ({"psfNdata": True}, {}),
        ({"pixelFlags_edge": 1}, {}),
        ({"psfflux": 1.0}, {}),
        ({"detector": 7}, {}),
        ({}, {"band": 3}),
        ({}, {"midpoint_mjd_tai": None}),
    ],
)
def test_dia_source_batch_raises_what_the_per_row_function_raises(make_row, change, keywords):
    # The bad value in the third row only: the batch falls back to row by row and raises
    # exactly the per-row error (or, where the columns absorb it, returns the same records).
    rows = [make_row(i) for i in range(4)]
    rows[2].update(change)
    for r in rows:  # keep the columns rectangular
        for key in change:
            r.setdefault(key, change[key])
    kwargs = {**EXPOSURE, **keywords}
    cols = _columns(rows)

    def outcome(fn):
        try:
            return fn()
        except (TypeError, ValueError) as exc:
            return type(exc), str(exc)

    per_row = outcome(
        lambda: [dia_source_record({k: v[i] for k, v in cols.items()}, **kwargs) for i in range(4)]
    )
    assert outcome(lambda: dia_source_batch(cols, len(rows), **kwargs)) == per_row
    # Every case but one is an error (a bool in an int column becomes 1 in a numpy array).
    assert isinstance(per_row, tuple) or change == {"psfNdata": True}


def test_dia_source_batch_missing_required_column(make_row):
    rows = [make_row(i) for i in range(2)]
    for r in rows:
        del r["dipoleNdata"]
    with pytest.raises(ValueError, match="'dipoleNdata' is required but missing"):
        dia_source_batch(_columns(rows), 2, **EXPOSURE)


# -- make_alert -----------------------------------------------------------------------------
def test_make_alert_structure(make_row, make_metadata):
    source = dia_source_record(make_row(), **EXPOSURE)
    alert = make_alert(source, cutouts={"cutoutScience": b"FITS"}, task_metadata=make_metadata())
    assert list(alert)[:-1] == [f["name"] for f in LSST_SCHEMA["fields"]]
    assert list(alert)[-1] == "diffstreamMetadata"
    assert alert["diaSourceId"] == source["diaSourceId"]
    assert alert["diaSource"] is source
    assert alert["cutoutScience"] == b"FITS"
    assert alert["cutoutDifference"] is None and alert["cutoutTemplate"] is None
    for name in ("observation_reason", "target_name", "ssSource", "mpc_orbits"):
        assert alert[name] is None
    # Rubin's invariants without an APDB: empty histories (lists), a diaObject of the one
    # diaSource, numbered like a new object (its creating diaSourceId), and linked back.
    assert alert["prvDiaSources"] == [] and alert["prvDiaForcedSources"] == []
    obj = alert["diaObject"]
    assert obj["diaObjectId"] == source["diaSourceId"] == source["diaObjectId"]
    assert obj["nDiaSources"] == 1
    assert obj["ra"] == pytest.approx(source["ra"]) and obj["dec"] == source["dec"]
    assert obj["r_psfFluxNdata"] == 1 and obj["g_psfFluxNdata"] == 0
    assert obj["r_psfFluxMean"] == source["psfFlux"]
    assert obj["firstDiaSourceMjdTai"] == obj["lastDiaSourceMjdTai"] == source["midpointMjdTai"]
    assert alert["diffstreamMetadata"]["method"] == "zogy"


def test_make_alert_dia_source_fields(make_row):
    source = dia_source_record(make_row(), **EXPOSURE)
    del source["bboxSize"]
    with pytest.raises(ValueError, match=r"missing \['bboxSize'\], extra \[\]"):
        make_alert(source, cutouts={}, task_metadata=None)


def test_make_alert_cutout_keys(make_row):
    source = dia_source_record(make_row(), **EXPOSURE)
    with pytest.raises(ValueError, match=r"cutout keys must be among .* got \['science'\]"):
        make_alert(source, cutouts={"science": b"x"}, task_metadata=None)


def test_make_alert_cutout_type(make_row):
    source = dia_source_record(make_row(), **EXPOSURE)
    with pytest.raises(TypeError, match="cutout 'cutoutDifference' must be bytes or None, got str"):
        make_alert(source, cutouts={"cutoutDifference": "x"}, task_metadata=None)


def test_make_alert_task_metadata_fields(make_row, make_metadata):
    source = dia_source_record(make_row(), **EXPOSURE)
    meta = make_metadata(gitSha="abc")
    del meta["timings"]
    with pytest.raises(ValueError, match=r"missing \['timings'\], extra \['gitSha'\]"):
        make_alert(source, cutouts={}, task_metadata=meta)


def test_task_metadata_fields_match_design():
    assert TASK_METADATA_FIELDS == (
        "pipelineVersion", "method", "configHash", "versionsHash", "exposureId", "visit",
        "detector", "timings", "nDiaSources", "templateCoverage", "scienceSha256",
        "templateSha256", "processedMjdTai",
    )  # fmt: skip


# -- schemaless serializers -----------------------------------------------------------------
def test_round_trip_our_schema(make_test_alert):
    alert = make_test_alert()
    data = serialize_alert(alert, None)
    assert isinstance(data, bytes)
    back = deserialize_alert(data, None)
    assert back == alert


def test_round_trip_without_metadata(make_test_alert):
    alert = make_test_alert(metadata=False)
    assert deserialize_alert(serialize_alert(alert)) == alert


def test_metadata_float_map_round_trip_exactly(make_test_alert):
    # timings are Avro floats: values exactly representable in float32 come back equal.
    alert = make_test_alert()
    back = deserialize_alert(serialize_alert(alert))
    assert back["diffstreamMetadata"]["timings"] == alert["diffstreamMetadata"]["timings"]


@pytest.mark.parametrize("reader", ["vendored", "lsst-alert-packet"])
def test_read_with_lsst_schema_drops_metadata(make_test_alert, reader):
    schema = LSST_SCHEMA if reader == "vendored" else lsst_packet.Schema.from_file().definition
    alert = make_test_alert()
    back = deserialize_alert(serialize_alert(alert), reader_schema=schema)
    assert "diffstreamMetadata" not in back
    assert back == without_metadata(alert)


def test_lsst_consumer_reading_lsst_schema_as_writer_still_decodes(make_test_alert):
    # Consumers that (wrongly, but commonly) decode with the LSST schema as the *writer*
    # schema also get the right fields, because our only extra field is the last one.
    alert = make_test_alert()
    lsst_schema = lsst_packet.Schema.from_file()
    back = lsst_schema.deserialize(serialize_alert(alert))
    assert back == without_metadata(alert)


def test_serialize_rejects_invalid_alert(make_test_alert):
    alert = make_test_alert()
    alert["diaSource"] = {**alert["diaSource"], "x": "left"}
    with pytest.raises(ValueError, match=rf"does not match schema {NAME}: .*diaSource.x is <left>"):
        serialize_alert(alert)


@pytest.mark.parametrize("cut", [0, 1, 5, 200, -50, -1])
def test_deserialize_truncated_bytes(make_test_alert, cut):
    data = serialize_alert(make_test_alert())
    with pytest.raises(ValueError, match=rf"cannot decode \d+ bytes as {NAME}"):
        deserialize_alert(data[:cut])


def test_deserialize_leftover_bytes(make_test_alert):
    data = serialize_alert(make_test_alert())
    with pytest.raises(ValueError, match="2 of .* bytes are left over"):
        deserialize_alert(data + b"\x00\x00")


def test_deserialize_confluent_framed_bytes(make_test_alert):
    # A Confluent wire-format header (magic 0 + 4-byte schema id) in front is not our format.
    data = b"\x00\x00\x00\x00\x07" + serialize_alert(make_test_alert())
    with pytest.raises(ValueError, match="cannot decode|left over"):
        deserialize_alert(data)


def test_deserialize_garbage():
    with pytest.raises(ValueError, match="cannot decode 13 bytes"):
        deserialize_alert(b"not an alert!")


def test_deserialize_type():
    with pytest.raises(TypeError, match="alert data must be bytes, got str"):
        deserialize_alert("abc")


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=400))
def test_deserialize_arbitrary_bytes_fails_cleanly(data):
    try:
        record = deserialize_alert(data)
    except ValueError:
        return
    # Rare garbage that decodes must at least be a whole alert.
    assert set(record) == {f["name"] for f in ALERT_SCHEMA["fields"]}


@functools.cache
def valid_bytes() -> bytes:
    """A small valid alert (hypothesis cannot take function-scoped fixtures)."""
    row = {
        "diaSourceId": 1, "x": 1.0, "y": 2.0, "ra": 3.0, "dec": 4.0, "psfNdata": 5,
        "trailNdata": 0, "dipoleNdata": 0, "bboxSize": 9,
    }  # fmt: skip
    source = dia_source_record(row, **EXPOSURE)
    return serialize_alert(
        make_alert(source, cutouts={"cutoutScience": b"xyz"}, task_metadata=None)
    )


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_deserialize_corrupted_bytes_fails_cleanly(data):
    valid = bytearray(valid_bytes())
    pos = data.draw(st.integers(0, len(valid) - 1))
    valid[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != valid[pos]))
    try:
        record = deserialize_alert(bytes(valid))
    except ValueError:
        return
    assert isinstance(record, dict)


# -- container files ------------------------------------------------------------------------
def test_container_file_round_trip(tmp_path, make_test_alert):
    alerts = [make_test_alert(i, metadata=i != 1) for i in range(3)]
    path = tmp_path / "alerts.avro"
    assert write_alert_file(path, iter(alerts)) == 3
    assert not (tmp_path / "alerts.avro.tmp").exists()
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        assert reader.codec == "deflate"
        assert reader.writer_schema["name"] == ALERT_SCHEMA["name"]
    assert read_alert_file(path) == alerts


def test_container_file_empty(tmp_path):
    path = tmp_path / "none.avro"
    assert write_alert_file(path, []) == 0
    assert read_alert_file(path) == []


@pytest.mark.parametrize("reader", ["vendored", "lsst-alert-packet"])
def test_container_file_read_with_lsst_schema(tmp_path, make_test_alert, reader):
    schema = LSST_SCHEMA if reader == "vendored" else lsst_packet.Schema.from_file().definition
    alerts = [make_test_alert(i) for i in range(2)]
    path = tmp_path / "alerts.avro"
    write_alert_file(path, alerts)
    assert read_alert_file(path, reader_schema=schema) == [without_metadata(a) for a in alerts]


def test_container_file_read_by_lsst_alert_packet(tmp_path, make_test_alert):
    alerts = [make_test_alert(i) for i in range(2)]
    path = tmp_path / "alerts.avro"
    write_alert_file(path, alerts)
    lsst_schema = lsst_packet.Schema.from_file()
    with path.open("rb") as fh:
        _, records = lsst_schema.retrieve_alerts(fh)
        assert list(records) == [without_metadata(a) for a in alerts]


def test_read_official_lsst_sample_with_our_schema():
    # The reverse direction: an LSST-written file read with our schema gets metadata None.
    major, minor = lsst_packet.get_latest_schema_version()
    sample = Path(lsst_packet.get_schema_path(major, minor)) / "sample_data" / "fakeAlert.avro"
    records = read_alert_file(sample, reader_schema=ALERT_SCHEMA)
    assert records
    assert all(r["diffstreamMetadata"] is None for r in records)
    assert all(isinstance(r["diaSource"]["ra"], float) for r in records)


def test_write_alert_file_invalid_alert(tmp_path, make_test_alert):
    bad = make_test_alert(1)
    bad["diaSource"] = {**bad["diaSource"], "ra": None}
    path = tmp_path / "alerts.avro"
    with pytest.raises(ValueError, match=rf"alert #2 does not match schema {NAME}"):
        write_alert_file(path, [make_test_alert(0), bad])
    assert not path.exists()
    assert not (tmp_path / "alerts.avro.tmp").exists()


def test_read_alert_file_garbage(tmp_path):
    path = tmp_path / "junk.avro"
    path.write_bytes(b"Obj\x01 this is not a container file" * 3)
    with pytest.raises(ValueError, match="cannot read alerts from .*junk.avro"):
        read_alert_file(path)


def test_read_alert_file_truncated(tmp_path, make_test_alert):
    path = tmp_path / "alerts.avro"
    write_alert_file(path, [make_test_alert(i) for i in range(3)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match="cannot read alerts from"):
        read_alert_file(path)


def test_float32_fields_survive_round_trip_exactly(make_row):
    # A regression guard for the float32 rounding: every float field compares equal after
    # a round trip, including awkward values.
    row = make_row(x=np.float64(math.pi * 1000), psfFlux=1 / 3, snr=np.float16(7.1))
    source = dia_source_record(row, **EXPOSURE)
    alert = make_alert(source, cutouts={}, task_metadata=None)
    buf = io.BytesIO(serialize_alert(alert))
    assert fastavro.schemaless_reader(buf, ALERT_SCHEMA)["diaSource"] == source


# -- container blocks written by write_alert_file (parallel deflate) -------------------------
@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_avro_long_matches_fastavro(value):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", value)
    assert long_bytes(value) == buf.getvalue()


def test_container_file_many_blocks(tmp_path, make_test_alert, monkeypatch):
    # Tiny blocks: one alert each, compressed on the pool and written back in order.
    monkeypatch.setattr(alerts_module, "_BLOCK_BYTES", 1)
    alerts = [make_test_alert(i, metadata=i % 3 != 0) for i in range(40)]
    path = tmp_path / "alerts.avro"
    assert write_alert_file(path, iter(alerts)) == 40
    with path.open("rb") as fh:
        reader = fastavro.block_reader(fh)
        assert reader.codec == "deflate"
        assert [block.num_records for block in reader] == [1] * 40
    assert read_alert_file(path) == alerts
    lsst_schema = lsst_packet.Schema.from_file()
    with path.open("rb") as fh:
        _, records = lsst_schema.retrieve_alerts(fh)
        assert list(records) == [without_metadata(a) for a in alerts]


def test_container_file_blocks_of_several_alerts(tmp_path, make_test_alert, monkeypatch):
    size = len(serialize_alert(make_test_alert(0)))
    monkeypatch.setattr(alerts_module, "_BLOCK_BYTES", 3 * size)
    alerts = [make_test_alert(i) for i in range(10)]
    path = tmp_path / "alerts.avro"
    write_alert_file(path, alerts)
    with path.open("rb") as fh:
        assert [b.num_records for b in fastavro.block_reader(fh)] == [3, 3, 3, 1]
    assert read_alert_file(path) == alerts


def test_write_alert_file_invalid_alert_in_a_later_block(tmp_path, make_test_alert, monkeypatch):
    monkeypatch.setattr(alerts_module, "_BLOCK_BYTES", 1)
    bad = make_test_alert(5)
    bad["diaSource"] = {**bad["diaSource"], "ra": None}
    good = [make_test_alert(i) for i in range(5)]
    path = tmp_path / "alerts.avro"
    with pytest.raises(ValueError, match=rf"alert #6 does not match schema {NAME}"):
        write_alert_file(path, [*good, bad])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compressor", ["default", "zlib"])
def test_container_blocks_are_plain_raw_deflate(tmp_path, make_test_alert, monkeypatch, compressor):
    # Whichever compressor wrote them (ISA-L when installed, else zlib), the blocks are the
    # Avro deflate codec: RFC 1951 raw deflate, which fastavro inflates with plain
    # zlib.decompress(data, -15).
    if compressor == "zlib":
        monkeypatch.setattr(alerts_module, "_deflate_lib", zlib)
    monkeypatch.setattr(alerts_module, "_BLOCK_BYTES", 1)
    alerts = [make_test_alert(i) for i in range(4)]
    path = tmp_path / "alerts.avro"
    write_alert_file(path, alerts)
    with path.open("rb") as fh:
        reader = fastavro.block_reader(fh)
        assert reader.codec == "deflate"
        assert [b.num_records for b in reader] == [1] * 4
    assert read_alert_file(path) == alerts


def test_deflate_module_prefers_isal_and_falls_back_to_zlib(monkeypatch):
    import importlib

    # isal is a dependency (pyproject.toml): when it is installed it must be the one used.
    assert alerts_module._deflate_module().__name__ == "isal.isal_zlib"

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    assert alerts_module._deflate_module() is zlib

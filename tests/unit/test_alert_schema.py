"""The vendored LSST schema, our generated alert schema, and schema fingerprints."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import fastavro
import lsst.alert.packet as lsst_packet
import pytest

from diffstream import schemas
from diffstream.schemas import build_alert_schema
from diffstream.stream.alerts.packets import ALERT_SCHEMA, LSST_SCHEMA, schema_fingerprint

pytestmark = pytest.mark.unit


def installed_lsst_dir() -> Path:
    major, minor = lsst_packet.get_latest_schema_version()
    return Path(lsst_packet.get_schema_path(major, minor))


# -- vendored copy --------------------------------------------------------------------------
def test_vendored_lsst_schema_is_the_installed_newest():
    # Fails when lsst-alert-packet is upgraded: re-vendor, then regenerate ours.
    installed = {p.name: p.read_bytes() for p in installed_lsst_dir().glob("*.avsc")}
    vendored = {p.name: p.read_bytes() for p in schemas.LSST_DIR.glob("*.avsc")}
    assert sorted(vendored) == sorted(installed)
    for name, data in installed.items():
        assert vendored[name] == data, f"schemas/lsst/{name} differs from the installed copy"
    assert sorted(p.name for p in schemas.LSST_DIR.iterdir()) == sorted(installed)


def test_lsst_alert_name_is_the_latest_version():
    major, minor = lsst_packet.get_latest_schema_version()
    assert schemas.lsst_alert_name() == f"lsst/lsst.v{major}_{minor}.alert"


@pytest.mark.parametrize("names", [[], ["lsst.v11_1.alert.avsc", "lsst.v12_0.alert.avsc"]])
def test_lsst_alert_name_needs_exactly_one(tmp_path, monkeypatch, names):
    for name in names:
        (tmp_path / name).write_text("{}")
    monkeypatch.setattr(schemas, "LSST_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="expected exactly one lsst.vM_m.alert.avsc"):
        schemas.lsst_alert_name()


def test_schema_path_unknown():
    with pytest.raises(FileNotFoundError, match="no schema named 'nope'"):
        schemas.schema_path("nope")


# -- generated schema -----------------------------------------------------------------------
def test_generated_schema_file_is_current():
    path = schemas.schema_path("diffstream.alert")
    assert path.read_text() == build_alert_schema.render(), (
        "schemas/diffstream.alert.avsc is stale: run python -m schemas.build_alert_schema"
    )


def test_generator_check_mode(tmp_path, capsys):
    assert build_alert_schema.main(["--check"]) == 0
    stale = tmp_path / "alert.avsc"
    stale.write_text("{}\n")
    assert build_alert_schema.main(["--check", "--output", str(stale)]) == 1
    assert "is stale" in capsys.readouterr().err
    assert build_alert_schema.main(["--output", str(stale)]) == 0
    assert stale.read_text() == build_alert_schema.render()


def test_generator_unknown_type():
    with pytest.raises(ValueError, match="unknown type 'lsst.v11_1.nope'"):
        build_alert_schema._inline("nope", "lsst.v11_1", {"lsst.v11_1.yes": {}}, set())


def test_generated_schema_is_self_contained():
    # One file, no sibling files needed: plain json + parse_schema works.
    parsed = fastavro.parse_schema(json.loads(schemas.schema_path("diffstream.alert").read_text()))
    assert schema_fingerprint(parsed) == schema_fingerprint(ALERT_SCHEMA)


def test_our_alert_is_lsst_plus_one_trailing_field():
    official = lsst_packet.Schema.from_file().definition
    major, minor = lsst_packet.get_latest_schema_version()
    assert ALERT_SCHEMA["name"] == official["name"] == f"lsst.v{major}_{minor}.alert"
    ours = [f["name"] for f in ALERT_SCHEMA["fields"]]
    assert ours[:-1] == [f["name"] for f in official["fields"]]
    assert ours[-1] == "diffstreamMetadata"
    # Every LSST field unchanged: without the extra field, the canonical forms are equal.
    stripped = copy.deepcopy(json.loads(schemas.schema_path("diffstream.alert").read_text()))
    extra = stripped["fields"].pop()
    assert schema_fingerprint(stripped) == schema_fingerprint(official)
    assert extra["default"] is None
    assert extra["type"][0] == "null"
    assert extra["type"][1]["namespace"] == "diffstream"
    assert extra["type"][1]["name"] == "TaskMetadata"


def test_metadata_record_is_the_standalone_file():
    record = json.loads(schemas.schema_path("diffstream.alert").read_text())["fields"][-1]
    assert record["type"][1] == schemas.load_json("diffstream.taskmetadata")


def test_task_metadata_method_symbols():
    record = schemas.load_json("diffstream.taskmetadata")
    method = next(f for f in record["fields"] if f["name"] == "method")
    assert method["type"]["symbols"] == ["zogy", "al"]


def test_generator_refuses_a_clashing_field(monkeypatch):
    real = build_alert_schema._lsst_definitions

    def fake():
        defs = real()
        defs[ALERT_SCHEMA["name"]]["fields"].append({"name": "diffstreamMetadata", "type": "null"})
        return defs

    monkeypatch.setattr(build_alert_schema, "_lsst_definitions", fake)
    with pytest.raises(ValueError, match="already has a field named 'diffstreamMetadata'"):
        build_alert_schema.build()


# -- fingerprints ---------------------------------------------------------------------------
# Avro's published CRC-64-AVRO test vectors (share/test/data/schema-tests.txt), as signed
# 64-bit integers; our hex is their 8 little-endian bytes.
SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('{"type": "boolean"}', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('{"type": "fixed", "name": "foo", "size": 15}', 1756455273707447556),
    ('{"type": "record", "name": "foo", "fields": [{"name": "f1", "type": "boolean"}]}',
     7843277075252814651),
    ('{"name": "PigValue", "type": "record", "fields": '
     '[{"name": "value", "type": ["null", "int", "long", "PigValue"]}]}',
     -1759257747318642341),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), SPEC_VECTORS)
def test_fingerprint_matches_avro_spec_vectors(text, expected):
    fp = schemas.fingerprint(json.loads(text))
    assert len(fp) == 16
    assert int.from_bytes(bytes.fromhex(fp), "little", signed=True) == expected


def test_fingerprint_stable_and_equal_for_equal_schemas():
    official = lsst_packet.Schema.from_file().definition
    assert schema_fingerprint(LSST_SCHEMA) == schema_fingerprint(official)
    reloaded = fastavro.parse_schema(
        json.loads(schemas.schema_path("diffstream.alert").read_text())
    )
    assert schema_fingerprint(reloaded) == schema_fingerprint(ALERT_SCHEMA)
    assert schema_fingerprint(ALERT_SCHEMA) == schema_fingerprint(ALERT_SCHEMA)


def test_fingerprint_ignores_docs_but_not_fields():
    base = schemas.load_json("diffstream.taskmetadata")
    redoc = copy.deepcopy(base)
    redoc["doc"] = "something else"
    redoc["fields"][0]["doc"] = "changed"
    assert schemas.fingerprint(redoc) == schemas.fingerprint(base)
    changed = copy.deepcopy(base)
    changed["fields"][-1]["type"] = "float"
    assert schemas.fingerprint(changed) != schemas.fingerprint(base)
    assert schema_fingerprint(ALERT_SCHEMA) != schema_fingerprint(LSST_SCHEMA)

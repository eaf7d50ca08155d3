"""Provenance in an output store: config (with clobber/backup), package versions, schemas,
the full metadata record; and the settings override order through the CLI's own parser."""

import json
import math
import types

import numpy as np
import pytest
from fastavro.schema import to_parsing_canonical_form

from diffstream.schemas import SCHEMA_DIR, load_parsed
from diffstream.stream.ops.errors import ConfigError
from diffstream.stream.ops.settings import Settings, load_settings
from diffstream.stream.provenance.store import (
    backup_path,
    check_and_write_versions,
    effective_config,
    full_record,
    render_config_toml,
    schema_inventory,
    write_config,
    write_schemas,
)
from diffstream.stream.provenance.taskmeta import TaskMetadata

pytestmark = pytest.mark.unit

ENV = "DIFFSTREAM_DETECTION_THRESHOLD"


# -- override order, end to end through the command line --------------------------------
@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ({"override", "toml", "env", "cli"}, 7.0),
        ({"override", "toml", "env"}, 5.5),
        ({"override", "toml"}, 4.5),
        ({"override"}, 4.0),
        (set(), 5.0),
        ({"override", "cli"}, 7.0),  # the seed's applyOverrides comes before the command line
        ({"override", "env"}, 5.5),
        ({"toml", "cli"}, 7.0),
    ],
)
def test_override_order_through_the_cli_parser(tmp_path, monkeypatch, layers, expected):
    from diffstream.stream.cli.main import build_parser, settings_from

    monkeypatch.delenv(ENV, raising=False)
    argv = ["subtract", "s.fits", "t.fits", "--out", str(tmp_path / "out")]
    if "override" in layers:
        over = tmp_path / "camera.toml"
        over.write_text("detection_threshold = 4.0\ncutout_size = 21\n")
        argv += ["--override-file", str(over)]
    if "toml" in layers:
        conf = tmp_path / "run.toml"
        conf.write_text("[diffstream]\ndetection_threshold = 4.5\n")
        argv += ["--config", str(conf)]
    if "env" in layers:
        monkeypatch.setenv(ENV, "5.5")
    if "cli" in layers:
        argv += ["--detection-threshold", "7"]
    settings = settings_from(build_parser().parse_args(argv))
    assert settings.detection_threshold == expected
    # A key only the override file sets survives the later layers that do not touch it.
    assert settings.cutout_size == (21 if "override" in layers else 30)


# -- config ---------------------------------------------------------------------------------
def test_written_toml_loads_back_to_the_same_settings(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    s = Settings(detection_threshold=6.5, data_roots=["/data/a", "/data/b"],
                 kafka={"acks": "all", "linger.ms": "5"}, input_topic='ex"posures')  # fmt: skip
    path = write_config(tmp_path, s)
    assert path == tmp_path / "config.toml"
    text = path.read_text()
    # Documented defaults are written next to each value.
    assert "# S_corr threshold, in sigma [default: 5.0]\ndetection_threshold = 6.5" in text
    back = load_settings(config_file=path)
    assert effective_config(back) == effective_config(s)


def test_secrets_never_reach_the_config_file(tmp_path):
    s = Settings(
        sasl_password="hunter2",  # noqa: S106 - a fake secret to look for
        kafka={"sasl.password": "hunter3", "acks": "all"},
    )
    text = render_config_toml(s)
    assert "hunter2" not in text and "hunter3" not in text
    assert "sasl_password" not in text and "sasl.password" not in text
    assert '"acks" = "all"' in text
    # Changing only a secret does not make a stored config differ.
    write_config(tmp_path, s)
    other = Settings(sasl_password="other", kafka={"acks": "all"})  # noqa: S106 - fake
    write_config(tmp_path, other)


def test_same_config_is_accepted_and_not_rewritten(tmp_path):
    path = write_config(tmp_path, Settings())
    before = path.read_text()
    assert write_config(tmp_path, Settings()) == path
    assert path.read_text() == before  # header timestamp unchanged: nothing was written
    assert not list(tmp_path.glob("config.toml.~*"))


def test_different_config_is_refused_with_a_unified_diff(tmp_path):
    path = write_config(tmp_path, Settings())
    with pytest.raises(ConfigError, match="differs from this run's") as info:
        write_config(tmp_path, Settings(detection_threshold=6.0, cutout_size=31))
    err = info.value
    msg = err.message
    assert "--clobber-config" in msg
    assert "-detection_threshold = 5.0" in msg and "+detection_threshold = 6.0" in msg
    assert "-cutout_size = 30" in msg and "+cutout_size = 31" in msg
    assert "tile_size" not in msg  # unchanged settings are not listed (no context lines)
    assert err.fields["path"] == str(path) and err.fields["diff"].startswith("---")
    assert "detection_threshold = 5.0" in path.read_text()  # stored file untouched


def test_clobber_replaces_and_backup_keeps_numbered_copies(tmp_path):
    path = write_config(tmp_path, Settings())
    write_config(tmp_path, Settings(detection_threshold=6.0), clobber=True, backup=True)
    write_config(tmp_path, Settings(detection_threshold=7.0), clobber=True, backup=True)
    assert "detection_threshold = 7.0" in path.read_text()
    assert "detection_threshold = 5.0" in (tmp_path / "config.toml.~1~").read_text()
    assert "detection_threshold = 6.0" in (tmp_path / "config.toml.~2~").read_text()
    write_config(tmp_path, Settings(detection_threshold=8.0), clobber=True)  # no backup
    assert not (tmp_path / "config.toml.~3~").exists()
    assert backup_path(path) == tmp_path / "config.toml.~3~"


def test_json_config_is_compared_the_same_way(tmp_path):
    path = write_config(tmp_path, Settings(), fmt="json")
    doc = json.loads(path.read_text())
    assert doc["config"]["detection_threshold"] == 5.0
    assert doc["defaults"]["detection_threshold"] == 5.0
    assert doc["descriptions"]["detection_threshold"] == "S_corr threshold, in sigma"
    write_config(tmp_path, Settings(), fmt="json")
    with pytest.raises(ConfigError, match=r"\+method = \"al\""):
        write_config(tmp_path, Settings(method="al"), fmt="json")


def test_config_format_must_be_known(tmp_path):
    with pytest.raises(ValueError, match="fmt must be one of.*got 'yaml'"):
        write_config(tmp_path, Settings(), fmt="yaml")


def test_unreadable_stored_config_is_refused_unless_clobber(tmp_path):
    (tmp_path / "config.toml").write_text("this is = = not toml\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        write_config(tmp_path, Settings())
    write_config(tmp_path, Settings(), clobber=True)
    assert "detection_threshold = 5.0" in (tmp_path / "config.toml").read_text()


# -- package versions -----------------------------------------------------------------------
REQUIRED = {"numpy", "numba", "llvmlite", "astropy", "sep", "fastavro", "confluent-kafka",
            "diffstream", "python"}  # fmt: skip


def test_versions_are_recorded_with_every_required_package(tmp_path):
    got = check_and_write_versions(tmp_path)
    assert REQUIRED <= set(got)
    assert got["numpy"] == np.__version__
    doc = json.loads((tmp_path / "versions.json").read_text())
    assert doc["versions"] == got and len(doc["versionsHash"]) == 16
    assert check_and_write_versions(tmp_path) == got  # same stack: accepted


def test_version_mismatch_names_each_package_old_to_new(tmp_path):
    old = {"python": "3.11.9", "numpy": "1.26.4", "sep": "1.2.1", "gone": "0.1"}
    check_and_write_versions(tmp_path, versions=old)
    new = {"python": "3.11.9", "numpy": "2.4.0", "sep": "1.4.1", "numba": "0.68.0"}
    with pytest.raises(ConfigError, match="package versions differ") as info:
        check_and_write_versions(tmp_path, versions=new)
    msg = info.value.message
    assert "numpy 1.26.4 -> 2.4.0" in msg and "sep 1.2.1 -> 1.4.1" in msg
    assert "numba not-recorded -> 0.68.0" in msg and "gone 0.1 -> not-recorded" in msg
    assert "python" not in msg.split(":", 1)[1].split(";")[0]  # unchanged: not listed
    assert "--clobber-versions" in msg
    assert info.value.fields["changes"]["numpy"] == ["1.26.4", "2.4.0"]


def test_clobber_versions_replaces_with_optional_backup(tmp_path):
    check_and_write_versions(tmp_path, versions={"numpy": "1.0"})
    got = check_and_write_versions(tmp_path, versions={"numpy": "2.0"}, clobber=True, backup=True)
    assert got == {"numpy": "2.0"}
    assert json.loads((tmp_path / "versions.json").read_text())["versions"] == {"numpy": "2.0"}
    old = json.loads((tmp_path / "versions.json.~1~").read_text())
    assert old["versions"] == {"numpy": "1.0"}


def test_unreadable_versions_file_is_refused(tmp_path):
    (tmp_path / "versions.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        check_and_write_versions(tmp_path)
    (tmp_path / "versions.json").write_text('{"versions": [1, 2]}')
    with pytest.raises(ConfigError, match="cannot be read.*not an object"):
        check_and_write_versions(tmp_path)
    got = check_and_write_versions(tmp_path, clobber=True)
    assert json.loads((tmp_path / "versions.json").read_text())["versions"] == got


# -- schemas --------------------------------------------------------------------------------
# CRC-64-AVRO as the Avro specification writes it ("Schema Fingerprints"), independent of
# fastavro's implementation.
_EMPTY = 0xC15D213AA4D7A795
_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY & -(_fp & 1))
    _TABLE.append(_fp)


def _rabin(data: bytes) -> str:
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little").hex()


def test_reference_rabin_matches_the_spec_vector():
    # The spec lists fingerprint("null") = 7195948357588979594 (as a signed long).
    assert int.from_bytes(bytes.fromhex(_rabin(b'"null"')), "little") == 7195948357588979594


def test_schemas_are_written_with_fingerprints_and_copies(tmp_path):
    path = write_schemas(tmp_path, registry_ids={"diffstream.alert": 7})
    doc = json.loads(path.read_text())["schemas"]
    for name in ("diffstream.alert", "diffstream.taskmetadata", "lsst/lsst.v11_1.alert"):
        entry = doc[name]
        canonical = to_parsing_canonical_form(load_parsed(name)).encode()
        assert entry["fingerprint"] == _rabin(canonical)
        copy = tmp_path / entry["file"]
        assert copy.read_bytes() == (SCHEMA_DIR / f"{name}.avsc").read_bytes()
    assert doc["diffstream.alert"]["registryId"] == 7
    assert doc["diffstream.taskmetadata"]["registryId"] is None
    assert doc["diffstream.alert"]["fullName"] == "lsst.v11_1.alert"
    assert len(doc) == len(list(SCHEMA_DIR.rglob("*.avsc")))
    # Our alert differs from LSST's by one field: different fingerprints.
    assert doc["diffstream.alert"]["fingerprint"] != doc["lsst/lsst.v11_1.alert"]["fingerprint"]


def test_registry_ids_are_checked():
    with pytest.raises(ValueError, match=r"unknown schemas \['nope'\]"):
        schema_inventory({"nope": 1})
    with pytest.raises(TypeError, match="must be an int, got str"):
        schema_inventory({"diffstream.alert": "1"})
    with pytest.raises(ValueError, match="must be >= 0, got -1"):
        schema_inventory({"diffstream.alert": -1})


def test_changed_schema_in_the_store_is_refused_unless_clobber(tmp_path):
    path = write_schemas(tmp_path, registry_ids={"diffstream.alert": 3})
    doc = json.loads(path.read_text())
    doc["schemas"]["diffstream.alert"]["fingerprint"] = "0000000000000000"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="diffstream.alert 0000000000000000 -> "):
        write_schemas(tmp_path)
    write_schemas(tmp_path, clobber=True, backup=True)
    assert (tmp_path / "schemas.json.~1~").exists()
    fresh = json.loads(path.read_text())["schemas"]["diffstream.alert"]
    assert fresh["fingerprint"] != "0000000000000000"


def test_unreadable_schemas_file_is_refused_unless_clobber(tmp_path):
    (tmp_path / "schemas.json").write_text('{"schemas": {"x": 1}}')
    with pytest.raises(ConfigError, match="stored schemas .* cannot be read"):
        write_schemas(tmp_path)
    path = write_schemas(tmp_path, clobber=True)
    assert "diffstream.alert" in json.loads(path.read_text())["schemas"]


def test_registry_ids_recorded_before_are_kept(tmp_path):
    write_schemas(tmp_path, registry_ids={"diffstream.alert": 3})
    path = write_schemas(tmp_path, registry_ids={"diffstream.taskmetadata": 4})
    doc = json.loads(path.read_text())["schemas"]
    assert doc["diffstream.alert"]["registryId"] == 3
    assert doc["diffstream.taskmetadata"]["registryId"] == 4


# -- full record ----------------------------------------------------------------------------
def _meta_with_items() -> TaskMetadata:
    meta = TaskMetadata()
    with meta.timer():
        with meta.timer("warp"):
            pass
        meta.set("configHash", "abc", step=meta.name)
        meta.set("config", {"method": "zogy"}, step=meta.name)
        meta.set("starMatch", {"sigmaX": float("nan"), "n": np.int64(4)}, step=meta.name)
        meta.set("templateCoverage", np.float32(0.5), step=meta.name)
        meta.set("nDiaSources", 2, step=meta.name)
    return meta


def test_full_record_from_metadata_is_strict_json():
    meta = _meta_with_items()
    rec = full_record(meta, status="no_work", error={"kind": "no_work", "message": "m"})
    text = json.dumps(rec, allow_nan=False)  # NaN became null, numpy became Python
    back = json.loads(text)
    assert back["status"] == "no_work" and back["error"]["kind"] == "no_work"
    assert back["configHash"] == "abc" and back["counts"] == {"nDiaSources": 2}
    assert back["fullMetadata"]["imageDifference.starMatch"] == {"sigmaX": None, "n": 4}
    assert back["templateCoverage"] == 0.5
    assert list(back["steps"]) == ["imageDifference", "imageDifference.warp"]
    assert back["exposureId"] is None and back["effectiveConfig"] is None
    assert len(back["schemas"]["diffstream.alert"]) == 16


def test_full_record_from_a_result_carries_ids_summary_and_config():
    meta = _meta_with_items()
    science = types.SimpleNamespace(exposure_id=77, visit=1234, detector=42)
    result = types.SimpleNamespace(metadata=meta, science=science, summary={"nDiaSources": 2})
    rec = full_record(result, settings=Settings(sasl_password="pw"))  # noqa: S106 - fake
    assert (rec["exposureId"], rec["visit"], rec["detector"]) == (77, 1234, 42)
    assert rec["alertSummary"] == {"nDiaSources": 2}
    assert rec["effectiveConfig"]["detection_threshold"] == 5.0
    assert "sasl_password" not in rec["effectiveConfig"]
    assert rec["fullMetadata"]["imageDifference.starMatch"]["sigmaX"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in rec["fullMetadata"].values())


def test_full_record_refuses_other_objects():
    with pytest.raises(TypeError, match="SubtractResult or TaskMetadata, got dict"):
        full_record({"metadata": 1})

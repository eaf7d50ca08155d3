"""Provenance kept in an output store: config, package versions, schemas, the full record.

The seed task's writeConfig / writePackageVersions / writeSchemas, for a directory instead of
a butler.  Each writer compares with what the same store already holds and refuses a
mismatch (``ConfigError`` naming what changed) unless told to clobber, so that the products
of one store always come from one configuration, one software stack and one alert schema.
``backup=True`` keeps the replaced file as ``<name>.~N~`` (GNU numbered backups).

Files written (all beside the run's other outputs):

``config.toml`` (or ``config.json``)
    Every setting with its description and default; loadable again with ``--config``.
    Secrets (``SecretStr`` fields and librdkafka ``*password*``/``*secret*`` keys) are left out.
``versions.json``
    The package versions of :data:`stream.provenance.versions.PACKAGES` and python, and their hash.
``schemas.json`` + ``schemas/**.avsc``
    The Avro schemas shipped in ``schemas/`` with their CRC-64-AVRO fingerprints (and
    schema-registry ids where given), and verbatim copies of the files.

:func:`full_record` builds the JSON record of one run for the stream's metadata topic.
Note (as the seed says of its own check): compare-then-write is not atomic, so two workers
writing the same store at once may both pass the check.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import shutil
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from diffstream import __version__
from diffstream.schemas import SCHEMA_DIR, fingerprint, load_parsed
from diffstream.stream.io.outputs import atomic_path
from diffstream.stream.ops.errors import ConfigError
from diffstream.stream.ops.settings import Settings, config_hash
from diffstream.stream.provenance.taskmeta import TaskMetadata
from diffstream.stream.provenance.versions import package_versions, versions_hash

__all__ = [
    "CONFIG_FORMATS",
    "VERSIONS_NAME",
    "SCHEMAS_NAME",
    "effective_config",
    "render_config_toml",
    "write_config",
    "check_and_write_versions",
    "schema_inventory",
    "write_schemas",
    "full_record",
    "backup_path",
]

CONFIG_FORMATS = {"toml": "config.toml", "json": "config.json"}
VERSIONS_NAME = "versions.json"
SCHEMAS_NAME = "schemas.json"
SCHEMA_COPY_DIR = "schemas"
# librdkafka properties that carry credentials (sasl.password, ssl.key.password,
# sasl.oauthbearer.client.secret, ...): never written to a provenance file.
_SECRET_WORDS = ("password", "secret", "token", "credential")
_UNSET = "(unset)"


# -- helpers --------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).isoformat()


def _write_text(path: Path, text: str) -> Path:
    # Temporary name + rename: a crash never leaves a half-written provenance file.
    tmp = atomic_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def backup_path(path: str | Path) -> Path:
    """The first free numbered backup name of ``path``: ``<name>.~1~``, ``<name>.~2~``, ..."""
    path = Path(path)
    n = 1
    while True:
        candidate = path.with_name(f"{path.name}.~{n}~")
        if not candidate.exists():
            return candidate
        n += 1


def _replace(path: Path, *, backup: bool) -> Path | None:
    """Before a rewrite: move the stored ``path`` to a numbered backup when asked to."""
    if not path.exists():
        return None
    if backup:
        dest = backup_path(path)
        os.replace(path, dest)
        return dest
    return None


def _is_secret_key(key: str) -> bool:
    low = key.lower()
    return any(word in low for word in _SECRET_WORDS)


def _plain(value: Any) -> Any:
    """Strict-JSON form: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array, without importing numpy
        return _plain(value.tolist())
    return str(value)


# -- config ---------------------------------------------------------------------------------
def effective_config(settings: Settings) -> dict[str, Any]:
    """Every setting's value as plain JSON types, in declaration order, secrets left out."""
    out: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        # A SecretStr field is left out set or not, so that setting a password never makes
        # a stored config "differ" and nothing about it reaches the file.
        if isinstance(value, SecretStr) or "SecretStr" in str(field.annotation):
            continue
        if name == "kafka":
            value = {k: v for k, v in value.items() if not _is_secret_key(k)}
        out[name] = _plain(value)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise ValueError(f"cannot write {type(value).__name__} value {value!r} as TOML")


def _default_of(name: str) -> Any:
    # Documented defaults come from the class declaration, not from a layered subclass.
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return _plain(field.default_factory())  # type: ignore[call-arg]
    return _plain(field.default)


def _canonical_lines(config: Mapping[str, Any]) -> list[str]:
    """One ``key = value`` line per setting: what is compared and diffed."""
    lines = []
    for key, value in config.items():
        shown = _UNSET if value is None else _toml_value(value)
        lines.append(f"{key} = {shown}")
    return lines


def render_config_toml(settings: Settings) -> str:
    """``config.toml`` text: a header, then each setting with its description and default."""
    config = effective_config(settings)
    head = [
        f"# diffstream {__version__}: effective configuration, written {_now()}",
        f"# science configHash = {config_hash(settings.science_config())}",
        "# Every setting is listed (unset ones as comments); load again with --config.",
        "# Secrets are not written.",
        "",
    ]
    body: list[str] = []
    for key, value in config.items():
        field = Settings.model_fields[key]
        default = _default_of(key)
        shown_default = _UNSET if default is None else _toml_value(default)
        doc = field.description or key.replace("_", " ")
        body.append(f"# {doc} [default: {shown_default}]")
        body.append(f"# {key} = {_UNSET}" if value is None else f"{key} = {_toml_value(value)}")
    return "\n".join(head + body) + "\n"


def _render_config_json(settings: Settings) -> str:
    config = effective_config(settings)
    doc = {
        "diffstreamVersion": __version__,
        "written": _now(),
        "configHash": config_hash(settings.science_config()),
        "config": config,
        "defaults": {k: _default_of(k) for k in config},
        "descriptions": {k: Settings.model_fields[k].description or "" for k in config},
    }
    return json.dumps(doc, indent=2) + "\n"


def _stored_config(path: Path, keys: list[str]) -> dict[str, Any]:
    """The stored file's settings, keyed like :func:`effective_config` (absent: None)."""
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            data = tomllib.loads(text)
            data = data.get("diffstream", data)
        else:
            data = json.loads(text)["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"stored config {path} cannot be read ({exc}); --clobber-config replaces it"
        raise ConfigError(msg, path=str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"stored config {path} is not a table of settings", path=str(path))
    ordered = {k: data.get(k) for k in keys}
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    return ordered


def write_config(
    outdir: str | Path,
    settings: Settings,
    *,
    clobber: bool = False,
    backup: bool = False,
    fmt: str = "toml",
) -> Path:
    """Write the effective config to ``outdir/config.toml`` (or ``.json``), or check it.

    Where the store already holds a config with the same values, nothing is written.  Where
    the values differ, ConfigError carries a unified diff (stored -> this run) unless
    ``clobber``; with ``backup`` the old file is kept as ``config.toml.~N~``.  Comments and
    the header (time written) are not compared, only the settings.
    """
    if fmt not in CONFIG_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(CONFIG_FORMATS)}, got {fmt!r}")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FORMATS[fmt]
    new = effective_config(settings)
    if path.exists():
        try:
            old = _stored_config(path, list(new))
        except ConfigError:
            if not clobber:
                raise
            old = {}  # unreadable: clobbering replaces it like any differing config
        old_lines, new_lines = _canonical_lines(old), _canonical_lines(new)
        if old_lines == new_lines:
            return path
        if not clobber:
            diff = "\n".join(
                difflib.unified_diff(
                    old_lines, new_lines, fromfile=f"{path} (stored)", tofile="this run",
                    lineterm="", n=0,
                )
            )  # fmt: skip
            msg = (
                f"the config stored in {path} differs from this run's; rerun with "
                f"--clobber-config to replace it (add --backup to keep the old one):\n{diff}"
            )
            raise ConfigError(msg, path=str(path), diff=diff)
        _replace(path, backup=backup)
    text = render_config_toml(settings) if fmt == "toml" else _render_config_json(settings)
    return _write_text(path, text)


# -- package versions -----------------------------------------------------------------------
def _version_changes(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, list[str]]:
    names = list(new) + [k for k in old if k not in new]
    return {
        n: [old.get(n, "not-recorded"), new.get(n, "not-recorded")]
        for n in names
        if old.get(n) != new.get(n)
    }


def check_and_write_versions(
    outdir: str | Path,
    *,
    clobber: bool = False,
    backup: bool = False,
    versions: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Compare this process's package versions with ``outdir/versions.json`` and write them.

    ``versions`` defaults to :func:`stream.provenance.versions.package_versions` (numpy, numba,
    llvmlite, astropy, sep, fastavro, confluent-kafka, diffstream, python, ...).  A mismatch
    with the stored set raises ConfigError naming each package as ``old -> new`` unless
    ``clobber`` (``backup``: keep the old file as ``versions.json.~N~``).  Returns the
    versions now recorded.
    """
    current = dict(versions if versions is not None else package_versions())
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / VERSIONS_NAME
    if path.exists():
        try:
            stored = json.loads(path.read_text())["versions"]
            if not isinstance(stored, dict):
                raise TypeError(f"'versions' is a {type(stored).__name__}, not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if not clobber:
                msg = (
                    f"stored package versions {path} cannot be read ({exc}); rerun with "
                    "--clobber-versions to replace them"
                )
                raise ConfigError(msg, path=str(path)) from exc
            stored = {}
        changes = _version_changes(stored, current)
        if not changes:
            return current
        if not clobber:
            listed = ", ".join(f"{n} {a} -> {b}" for n, (a, b) in changes.items())
            msg = (
                f"package versions differ from those recorded in {path}: {listed}; rerun "
                "with --clobber-versions to replace them (add --backup to keep the old ones)"
            )
            raise ConfigError(msg, path=str(path), changes=changes)
        _replace(path, backup=backup)
    doc = {"written": _now(), "versionsHash": versions_hash(current), "versions": current}
    _write_text(path, json.dumps(doc, indent=2) + "\n")
    return current


# -- schemas --------------------------------------------------------------------------------
def schema_inventory(
    registry_ids: Mapping[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every ``.avsc`` under ``schemas/``: name -> full name, file, fingerprint, sha256, id.

    Names are paths under ``schemas/`` without ``.avsc`` (``diffstream.alert``,
    ``lsst/lsst.v11_1.alert``): our alert and LSST's share the Avro full name
    ``lsst.v11_1.alert``, so the full name cannot be the key.  ``registry_ids`` maps names
    to schema-registry ids (non-negative ints).
    """
    files = sorted(SCHEMA_DIR.rglob("*.avsc"))
    names = {p.relative_to(SCHEMA_DIR).as_posix().removesuffix(".avsc"): p for p in files}
    ids = dict(registry_ids or {})
    unknown = sorted(set(ids) - set(names))
    if unknown:
        raise ValueError(f"registry_ids names unknown schemas {unknown}; known: {sorted(names)}")
    for name, rid in ids.items():
        if isinstance(rid, bool) or not isinstance(rid, int):
            raise TypeError(f"registry id of {name!r} must be an int, got {type(rid).__name__}")
        if rid < 0:
            raise ValueError(f"registry id of {name!r} must be >= 0, got {rid}")
    out: dict[str, dict[str, Any]] = {}
    for name, path in names.items():
        parsed = load_parsed(name)
        out[name] = {
            "fullName": parsed.get("name"),
            "file": f"{SCHEMA_COPY_DIR}/{name}.avsc",
            "fingerprint": fingerprint(parsed),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "registryId": ids.get(name),
        }
    return out


def write_schemas(
    outdir: str | Path,
    *,
    registry_ids: Mapping[str, int] | None = None,
    clobber: bool = False,
    backup: bool = False,
) -> Path:
    """Write ``outdir/schemas.json`` (fingerprints, registry ids) and copies of the .avsc files.

    Where the store already records schemas whose fingerprints differ from these (one
    changed, added or removed), ConfigError names them unless ``clobber``.  Registry ids
    recorded before are kept for schemas not given one now.  Returns the schemas.json path.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SCHEMAS_NAME
    current = schema_inventory(registry_ids)
    if path.exists():
        try:
            stored = json.loads(path.read_text())["schemas"]
            old_fp = {n: s["fingerprint"] for n, s in stored.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if not clobber:
                msg = f"stored schemas {path} cannot be read ({exc}); clobber to replace them"
                raise ConfigError(msg, path=str(path)) from exc
            stored, old_fp = {}, {}
        changes = _version_changes(old_fp, {n: s["fingerprint"] for n, s in current.items()})
        if changes and not clobber:
            listed = ", ".join(f"{n} {a} -> {b}" for n, (a, b) in changes.items())
            msg = f"Avro schemas differ from those recorded in {path}: {listed}"
            raise ConfigError(msg, path=str(path), changes=changes)
        if not changes:
            for name, entry in current.items():
                if entry["registryId"] is None and name in stored:
                    entry["registryId"] = stored[name].get("registryId")
        else:
            _replace(path, backup=backup)
    for name in current:
        dest = out / SCHEMA_COPY_DIR / f"{name}.avsc"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCHEMA_DIR / f"{name}.avsc", dest)
    doc = {"written": _now(), "diffstreamVersion": __version__, "schemas": current}
    return _write_text(path, json.dumps(doc, indent=2) + "\n")


# -- the full record ------------------------------------------------------------------------
def full_record(
    source: Any,
    *,
    status: str = "done",
    settings: Settings | None = None,
    error: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full task-metadata record of one exposure, for the stream's metadata topic.

    ``source`` is a :class:`stream.pipeline.subtract.SubtractResult` (status "done") or, when the
    run
    stopped early (no work, bad input), its :class:`TaskMetadata`.  ``settings`` adds the
    whole effective config (secrets left out); ``error`` is ``DiffstreamError.to_record()``.
    Strict JSON: ``json.dumps(record, allow_nan=False)`` works (non-finite floats -> null).
    Keyed on the topic by ``f"{exposureId}:{configHash}"`` (docs/metadata.md).
    """
    meta = getattr(source, "metadata", source)
    if not isinstance(meta, TaskMetadata):
        msg = f"source must be a SubtractResult or TaskMetadata, got {type(source).__name__}"
        raise TypeError(msg)
    steps = meta.steps()
    root = steps.get(meta.name, {})
    science = getattr(source, "science", None)
    summary = getattr(source, "summary", None) or None

    def ident(attr: str, key: str) -> Any:
        if science is not None and getattr(science, attr, None) is not None:
            return getattr(science, attr)
        return (summary or {}).get(key)

    counts = {
        k: root[k] for k in ("nDetections", "nDiaSources", "nPositive", "nNegative") if k in root
    }
    record: dict[str, Any] = {
        "recordType": "diffstream.taskMetadata.full",
        "recordVersion": 1,
        "task": meta.name,
        "status": status,
        "pipelineVersion": __version__,
        "exposureId": ident("exposure_id", "exposureId"),
        "visit": ident("visit", "visit"),
        "detector": ident("detector", "detector"),
        "configHash": root.get("configHash"),
        "config": root.get("config"),
        "effectiveConfig": effective_config(settings) if settings is not None else None,
        "versionsHash": root.get("versionsHash"),
        "versions": root.get("versions"),
        "inputs": {"science": root.get("science"), "template": root.get("template")},
        "templateCoverage": root.get("templateCoverage"),
        "counts": counts,
        # The real/bogus model behind every diaSource's reliability: version, file sha256,
        # or why there is none (stream/pipeline/steps.py score_reliability).
        "reliability": root.get("reliability"),
        "timings": meta.timings(),
        "steps": meta.step_summary(),
        "fullMetadata": meta.full_metadata(),
        "alertSummary": summary,
        "schemas": {
            n: fingerprint(load_parsed(n)) for n in ("diffstream.alert", "diffstream.taskmetadata")
        },
        "error": dict(error) if error is not None else None,
        "recordedUtc": _now(),
    }
    if extra:
        record.update(extra)
    return _plain(record)

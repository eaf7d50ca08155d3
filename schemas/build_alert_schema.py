"""Generate ``schemas/diffstream.alert.avsc`` from the vendored LSST schema and our metadata.

Run ``python -m diffstream.schemas.build_alert_schema`` after upgrading ``schemas/lsst/`` or editing
``diffstream.taskmetadata.avsc``; ``--check`` only reports whether the committed file is
current (exit 1 if not), for CI.

Our alert is the LSST alert record with the same full name (``lsst.vM_m.alert``), every LSST
field unchanged and in order, plus one trailing field ``diffstreamMetadata`` (a nullable
``diffstream.TaskMetadata``, default null).  Avro schema resolution ignores writer fields the
reader does not know, so consumers reading with the official LSST schema get standard alerts.

The named types LSST keeps in sibling files (``lsst.v11_1.diaSource`` ...) are inlined at their
first use, so the output is one self-contained file any Avro library can load.  We inline
ourselves instead of using fastavro's expanded ``load_schema`` (a private ``_write_hint``
flag) so that the output keeps LSST's docs and namespaces exactly as published.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from diffstream.schemas import LSST_DIR, SCHEMA_DIR, load_json, lsst_alert_name

OUTPUT = SCHEMA_DIR / "diffstream.alert.avsc"
METADATA_SCHEMA = "diffstream.taskmetadata"
METADATA_FIELD = "diffstreamMetadata"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = ("record", "error", "enum", "fixed")


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _lsst_definitions() -> dict[str, Any]:
    """Full name -> JSON definition of every vendored LSST named type."""
    out: dict[str, Any] = {}
    for path in sorted(LSST_DIR.glob("*.avsc")):
        schema = json.loads(path.read_text())
        out[_full_name(schema["name"], schema.get("namespace"))] = schema
    return out


def _inline(node: Any, namespace: str | None, defs: dict[str, Any], seen: set[str]) -> Any:
    """Copy of ``node`` with named-type references replaced by their definition at first use.

    Avro allows one definition per name, so later references stay names.
    """
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _full_name(node, namespace)
        if full in seen:
            return node
        if full not in defs:
            raise ValueError(f"schema refers to unknown type {full!r}")
        return _inline(copy.deepcopy(defs[full]), namespace, defs, seen)
    if isinstance(node, list):
        return [_inline(item, namespace, defs, seen) for item in node]
    if not isinstance(node, dict):
        raise ValueError(f"not an Avro schema node: {node!r}")
    out = dict(node)
    kind = node["type"]
    if kind in _NAMED:
        namespace = node.get("namespace", namespace)
        if "." in node["name"]:
            namespace = node["name"].rsplit(".", 1)[0]
        seen.add(_full_name(node["name"], namespace))
    if kind in ("record", "error"):
        out["fields"] = [
            {**field, "type": _inline(field["type"], namespace, defs, seen)}
            for field in node["fields"]
        ]
    elif kind == "array":
        out["items"] = _inline(node["items"], namespace, defs, seen)
    elif kind == "map":
        out["values"] = _inline(node["values"], namespace, defs, seen)
    elif isinstance(kind, dict | list) or (isinstance(kind, str) and kind not in _PRIMITIVES):
        # {"type": <schema>} wraps another schema.
        out["type"] = _inline(kind, namespace, defs, seen)
    return out


def build() -> dict[str, Any]:
    """The diffstream alert schema as a JSON-ready dict."""
    defs = _lsst_definitions()
    root = load_json(lsst_alert_name())
    root_name = _full_name(root["name"], root.get("namespace"))
    alert = _inline(root_name, None, defs, set())
    if any(f["name"] == METADATA_FIELD for f in alert["fields"]):
        raise ValueError(f"LSST schema {root_name} already has a field named {METADATA_FIELD!r}")
    alert["doc"] = (
        f"{alert.get('doc', root_name)}, plus the trailing field {METADATA_FIELD} "
        "(diffstream task metadata); readable with the official LSST schema."
    )
    alert["fields"].append(
        {
            "name": METADATA_FIELD,
            "type": ["null", copy.deepcopy(load_json(METADATA_SCHEMA))],
            "default": None,
            "doc": "Provenance of the diffstream run that produced this alert (not in LSST's "
            "schema; readers using LSST's schema skip it).",
        }
    )
    return alert


def render() -> str:
    """The exact text of ``diffstream.alert.avsc`` (generated, committed)."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffstream.schemas.build_alert_schema")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(
                f"{args.output} is stale: run python -m diffstream.schemas.build_alert_schema",
                file=sys.stderr,
            )
            return 1
        print(f"{args.output} is current")
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Avro schemas (.avsc) shipped with diffstream, loaded by name at run time."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent


def schema_path(name: str) -> Path:
    """Path of ``schemas/<name>.avsc``; ``name`` may include a subfolder (``lsst/...``)."""
    path = SCHEMA_DIR / f"{name}.avsc"
    if not path.is_file():
        raise FileNotFoundError(f"no schema named {name!r} in {SCHEMA_DIR}")
    return path


@lru_cache(maxsize=None)
def load_json(name: str) -> Any:
    """The schema's JSON definition (not parsed by fastavro)."""
    return json.loads(schema_path(name).read_text())

"""Package versions recorded with every run (the seed's writePackageVersions)."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata

PACKAGES = (
    "numpy", "numba", "llvmlite", "scipy", "astropy", "sep", "fastavro", "isal",
    "confluent-kafka", "pydantic-settings", "diffstream",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not-installed"
    return out


def versions_hash(versions: dict[str, str]) -> str:
    blob = json.dumps(versions, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

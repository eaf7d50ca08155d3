"""The distribution installs one import package, diffstream, and every room of it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"diffstream": "diffstream", "diffstream.stream": "stream",
          "diffstream.jitcore": "jitcore", "diffstream.schemas": "schemas"}  # fmt: skip


def test_every_package_folder_is_listed_in_pyproject():
    # A new room (subpackage) that pyproject.toml does not list would be missing from a
    # non-editable install while every test in this tree still passed.
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == MAPPED
    found = set()
    for name, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found <= set(tool["packages"]), sorted(found - set(tool["packages"]))


@pytest.mark.slow
def test_wheel_holds_only_the_diffstream_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("diffstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"diffstream"}
    must = [
        "__main__.py",
        "stream/cli/main.py",
        "jitcore/_kernels/zogy.py",
        "schemas/diffstream.alert.avsc",
        "schemas/lsst/lsst.v11_1.alert.avsc",
        "stream/alerts/models/diffstream-gbt-1.json",  # the reliability model (package data)
        "py.typed",
    ]
    assert [m for m in must if f"diffstream/{m}" not in names] == []


def test_python_dash_m_diffstream():
    out = subprocess.run([sys.executable, "-m", "diffstream", "--version"], capture_output=True,
                         text=True, check=True, timeout=120)  # fmt: skip
    from diffstream import __version__

    assert __version__ in out.stdout + out.stderr

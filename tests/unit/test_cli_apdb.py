"""``diffstream apdb init|upgrade|stats`` and ``diffstream lightcurve`` on a SQLite APDB."""

from __future__ import annotations

import json

from diffstream.stream.cli.main import main
from diffstream.stream.ops.errors import EXIT_BAD_INPUT
from diffstream.stream.pipeline.apdb.schema import SCHEMA_VERSION
from tests.apdb_helpers import apdb_url  # noqa: F401
from tests.unit.test_apdb import _run


def test_apdb_init_stats_and_upgrade(apdb_url, capsys):  # noqa: F811
    url = apdb_url("sqlite")
    assert main(["apdb", "init", "--apdb", url]) == 0
    assert f"schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    _run(url, 1, [400.0, 250.0, 0.0])
    assert main(["apdb", "stats", "--apdb", url]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["DiaObject"], stats["DiaSource"], stats["DiaForcedSource"]) == (2, 2, 2)
    assert main(["apdb", "upgrade", "--apdb", url]) == 0
    assert f"schema version {SCHEMA_VERSION} -> {SCHEMA_VERSION}" in capsys.readouterr().out


def test_apdb_commands_need_a_url(capsys, monkeypatch):
    monkeypatch.delenv("DIFFSTREAM_APDB", raising=False)
    assert main(["apdb", "stats"]) == EXIT_BAD_INPUT
    assert "no APDB given" in capsys.readouterr().err


def test_lightcurve_prints_and_plots(apdb_url, capsys, tmp_path, monkeypatch):  # noqa: F811
    url = apdb_url("sqlite")
    alerts, _ = _run(url, 1, [400.0, 250.0, 0.0])
    _run(url, 2, [380.0, 0.0, 0.0])
    oid = alerts[1]["diaObject"]["diaObjectId"]
    monkeypatch.setenv("DIFFSTREAM_APDB", url)  # the env var works like --apdb
    png = tmp_path / "lc.png"
    assert main(["lightcurve", str(oid), "--plot", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"diaObject {oid}") and "nDiaSources 1" in out[0]
    kinds = [line.split()[2] for line in out[2:] if line.strip() and not line.startswith("plot")]
    assert kinds == ["det", "forced", "forced"]  # detected at visit 1, forced at 1 and 2
    assert png.stat().st_size > 1000
    assert main(["lightcurve", "12345", "--apdb", url]) == EXIT_BAD_INPUT

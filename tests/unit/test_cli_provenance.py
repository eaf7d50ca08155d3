"""diffstream subtract: provenance files, clobber refusal, debug plots (issue 6)."""

import pytest

from diffstream.stream.cli.main import main

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from diffstream.stream.sim.simulate import simulate_pair, write_pair

    return write_pair(simulate_pair(seed=1, shape=(256, 256)), tmp_path_factory.mktemp("in"))


def test_subtract_writes_provenance_refuses_changes_and_plots(pair, tmp_path, capsys):
    sci, tmpl = (str(p) for p in pair)
    out, dbg = tmp_path / "out", tmp_path / "dbg"
    base = ["subtract", sci, tmpl, "--out", str(out), "--visit", "5", "--detector", "3"]
    assert main([*base, "--debug-plots", str(dbg)]) == 0
    for name in ("config.toml", "versions.json", "schemas.json", "metadata.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in dbg.iterdir()) == [
        "visit5-det3-cutouts.png", "visit5-det3-panels.png",
        "visit5-det3-psfs.png", "visit5-det3-score_hist.png",
    ]  # fmt: skip
    capsys.readouterr()
    assert main([*base, "--detection-threshold", "6"]) == 2
    err = capsys.readouterr().err
    assert "-detection_threshold = 5.0" in err and "+detection_threshold = 6.0" in err
    assert main([*base, "--detection-threshold", "6", "--clobber-config", "--backup"]) == 0
    assert "detection_threshold = 5.0" in (out / "config.toml.~1~").read_text()

"""The directory transport (``diffstream run --input-dir --output-dir``): same worker, files
in and out, offsets committed after the outputs, bad files dead-lettered, restart resumes."""

from __future__ import annotations

import json

import fastavro
import pytest

from diffstream.stream.alerts.packets import read_alert_file
from diffstream.stream.cli.main import main
from diffstream.stream.ops.settings import Settings
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from diffstream.stream.transport.directory import DirTransport, write_event_file
from diffstream.stream.transport.events import make_event
from diffstream.stream.transport.records import read_record_file, write_record_file
from diffstream.stream.transport.service import Worker, run_loop

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_pair(simulate_pair(seed=21, shape=(256, 256), n_stars=60, n_transients=8), root / "p")
    return root


@pytest.fixture(scope="module")
def result(data):
    from diffstream.stream.pipeline.subtract import subtract_files

    return subtract_files(str(data / "p/science.fits"), str(data / "p/template.fits"),
                          settings=Settings(), visit=1, detector=2, exposure_id=3)  # fmt: skip


def _ev(data, rid, sci="p/science.fits"):
    return make_event(str(data / sci), str(data / "p/template.fits"), visit=1, detector=2,
                      exposure_id=3, request_id=rid)  # fmt: skip


def _run(data, inp, out, result, **kw):
    worker = Worker(Settings(data_roots=[str(data)]), subtract=lambda *a, **k: result)
    transport = DirTransport(inp, out)
    try:
        return run_loop(worker, transport, exit_when_idle=0.01, poll_timeout=0.0, **kw)
    finally:
        transport.close()


def test_events_in_alerts_summaries_and_offsets_out(data, result, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    write_event_file(inp / "a.avro", [_ev(data, "r0"), _ev(data, "r1")])
    stats = _run(data, inp, out, result)
    assert (stats.committed, stats.done) == (2, 2)
    for i in range(2):
        alerts = read_alert_file(out / "alerts" / f"a-{i:06d}.avro")
        assert [a["diaSourceId"] for a in alerts] == [a["diaSourceId"] for a in result.alerts]
        (summary,) = read_record_file(out / "summaries" / f"a-{i:06d}.avro")
        assert summary["requestId"] == f"r{i}" and summary["nAlerts"] == len(result.alerts)
    assert json.loads((out / "offsets.json").read_text()) == {"a.avro": 2}
    assert list((out / "deadletters").iterdir()) == []
    # A second run finds everything committed: nothing is processed again.
    assert _run(data, inp, out, result).consumed == 0


def test_restart_resumes_after_the_committed_record(data, result, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    write_event_file(inp / "a.avro", [_ev(data, f"r{i}") for i in range(3)])
    assert _run(data, inp, out, result, max_messages=1).committed == 1
    stats = _run(data, inp, out, result)
    assert stats.committed == 2
    names = sorted(p.name for p in (out / "summaries").iterdir())
    assert names == ["a-000000.avro", "a-000001.avro", "a-000002.avro"]


def test_bad_files_become_dead_letters_and_good_ones_go_on(data, result, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "b-junk.avro").write_bytes(b"this is not avro")
    other = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}
    write_record_file(inp / "c-other.avro", fastavro.parse_schema(other), [{"x": 1}])
    write_event_file(inp / "d-good.avro", [_ev(data, "good"), _ev(data, "miss", "p/nope.fits")])
    (inp / ".e-hidden.avro").write_bytes(b"ignored: writers rename into place")
    stats = _run(data, inp, out, result)
    assert (stats.consumed, stats.done, stats.failed) == (4, 2, 2)
    (junk,) = read_record_file(out / "deadletters" / "b-junk-000000.avro")
    assert junk["originalValue"] == b"this is not avro" and junk["kind"] == "bad_event"
    assert '"reason": "undecodable"' in junk["fieldsJson"]
    (other_dl,) = read_record_file(out / "deadletters" / "c-other-000000.avro")
    assert '"reason": "unknown_schema"' in other_dl["fieldsJson"]
    assert other_dl["topic"] == str(inp / "c-other.avro") and other_dl["offset"] == 0
    offsets = json.loads((out / "offsets.json").read_text())
    assert offsets == {"b-junk.avro": 1, "c-other.avro": 1, "d-good.avro": 2}


def test_missing_file_is_dead_lettered_by_the_real_pipeline(data, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    write_event_file(inp / "a.avro", [_ev(data, "miss", "p/nope.fits")])
    worker = Worker(Settings(data_roots=[str(data)]))
    stats = run_loop(worker, DirTransport(inp, out), exit_when_idle=0.01, poll_timeout=0.0)
    assert stats.failed == 1
    (dl,) = read_record_file(out / "deadletters" / "a-000000.avro")
    assert dl["kind"] == "bad_exposure" and "file not found" in dl["message"]


def test_truncated_file_keeps_the_records_before_the_break(data, result, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    # Big, incompressible-ish records in separate blocks, so cutting the file breaks a later one.
    events = [_ev(data, f"r{i}-" + "x" * 200) for i in range(40)]
    path = inp / "t.avro"
    from diffstream.stream.transport.events import EVENT_SCHEMA

    with path.open("wb") as fh:
        fastavro.writer(fh, EVENT_SCHEMA, events, sync_interval=100)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    stats = _run(data, inp, out, result)
    assert stats.done >= 1 and stats.failed == 1
    (dl,) = list((out / "deadletters").iterdir())
    rec = read_record_file(dl)[0]
    assert rec["offset"] == stats.done and rec["originalValue"] == raw[: len(raw) // 2]
    # Committed past the break: a rerun does not dead-letter it again.
    assert _run(data, inp, out, result).consumed == 0


def test_cli_publish_event_and_run_in_directory_mode(data, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    sci, tmpl = str(data / "p/science.fits"), str(data / "p/template.fits")
    assert main(["publish-event", sci, tmpl, "--to-dir", str(inp), "--exposure-id", "3"]) == 0
    assert "requestId" in capsys.readouterr().out
    code = main(["run", "--input-dir", str(inp), "--output-dir", str(out),
                 "--data-root", str(data), "--exit-when-idle", "0.5"])  # fmt: skip
    assert code == 0
    assert "committed 1 (done 1" in capsys.readouterr().out
    (summary_file,) = list((out / "summaries").iterdir())
    (summary,) = read_record_file(summary_file)
    from astropy.io import fits

    visit = next(h.header["VISIT"] for h in fits.open(sci) if "VISIT" in h.header)
    assert summary["status"] == "done" and summary["visit"] == visit  # from the header


def test_cli_run_refuses_without_a_transport_or_data_root(tmp_path, capsys):
    assert main(["run", "--data-root", str(tmp_path)]) == 2
    assert "run needs --bootstrap-servers" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    assert main(["run", "--input-dir", str(tmp_path / "in"), "--output-dir",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "needs at least one data root" in capsys.readouterr().err


def test_cli_rejects_malformed_x_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "-X", "no-equals-sign"])
    assert info.value.code == 2
    assert "-X takes key=value" in capsys.readouterr().err


def test_cli_run_serves_metrics_when_asked(data, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    code = main(["run", "--input-dir", str(inp), "--output-dir", str(tmp_path / "o"),
                 "--data-root", str(data), "--exit-when-idle", "0.2",
                 "--metrics-port", "0"])  # fmt: skip
    assert code == 0
    assert "consumed 0" in capsys.readouterr().out

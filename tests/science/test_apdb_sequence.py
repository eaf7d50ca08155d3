"""Issue 14's simulated sequence: 10 visits of one field through the pipeline with an APDB.

Same stars, four variables and a transient appearing at visit 4 (index 3) and fading
(stream/sim/sequence.py), on SQLite and on PostgreSQL:

- each variable has exactly one diaObject, whose nDiaSources is the visits it was detected on;
- the last alert's prvDiaSources and prvDiaForcedSources follow the truth light curve within
  the errors, sorted by time;
- reprocessing the visits (a replay) keeps every diaObjectId and adds no diaSource; it adds
  the transient's forced photometry on the visits before it appeared (precovery: the object
  now exists in their footprint), consistent with zero;
- an alert with history is read with the official lsst-alert-packet schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lsst.alert.packet as lsst_packet
import numpy as np
import pytest

from diffstream.stream.alerts.packets import deserialize_alert, serialize_alert
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.apdb.association import separation_arcsec
from diffstream.stream.pipeline.apdb.store import Apdb
from diffstream.stream.pipeline.subtract import subtract_files
from diffstream.stream.sim.sequence import simulate_sequence, write_sequence
from tests.apdb_helpers import apdb_url, pg_server  # noqa: F401

pytestmark = [pytest.mark.science, pytest.mark.slow]

N_VISITS = 10
SEED = 3


@pytest.fixture(scope="module")
def sequence(tmp_path_factory: pytest.TempPathFactory):
    seq = simulate_sequence(seed=SEED, n_visits=N_VISITS, transient_visit=3)
    template, visits = write_sequence(seq, tmp_path_factory.mktemp("sequence"))
    return seq, template, visits


def _process(url: str, template: Path, visits: list[Path], seq, which=None) -> list[list[dict]]:
    settings = Settings(apdb=url, fft_workers=1)
    out = []
    for v in which if which is not None else range(len(visits)):
        result = subtract_files(
            str(visits[v]), str(template), settings=settings, exposure_id=5000 + v,
            visit=seq.visits[v].visit, detector=7,
        )  # fmt: skip
        out.append(result.alerts)
    return out


def _near(alerts: list[dict[str, Any]], ra: float, dec: float) -> list[dict[str, Any]]:
    return [
        a for a in alerts
        if separation_arcsec(ra, dec, a["diaSource"]["ra"], a["diaSource"]["dec"]) < 1.0
    ]  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sequence_objects_histories_and_replay(sequence, apdb_url, backend):  # noqa: F811
    seq, template, visits = sequence
    url = apdb_url(backend)
    per_visit = _process(url, template, visits, seq)
    truth = seq.truth
    db = Apdb(url)
    with db.engine.connect() as conn:
        t = db.tables["DiaObject"]
        objects = np.array(list(conn.execute(db.sa.select(t.c.diaObjectId, t.c.ra, t.c.dec))))
    object_ids: dict[int, int] = {}
    for k, kind in enumerate(truth["kind"]):
        sep = separation_arcsec(truth["ra"][k], truth["dec"][k], objects[:, 1], objects[:, 2])
        mine = objects[sep < 1.0]
        assert len(mine) == 1, f"{kind} {k}: {len(mine)} diaObjects within 1 arcsec"
        object_ids[k] = int(mine[0, 0])
        ra, dec = truth["ra"][k], truth["dec"][k]
        detected = [v for v in range(N_VISITS) if _near(per_visit[v], ra, dec)]
        obj = db.object(object_ids[k])
        assert obj["nDiaSources"] == len(detected)
        if kind == "variable":
            assert len(detected) == N_VISITS  # S/N >= 28 at every visit
        else:
            assert detected[0] == 3  # the transient appears at visit 4

    variables = [k for k, kind in enumerate(truth["kind"]) if kind == "variable"]
    for k in variables:
        (last,) = _near(per_visit[-1], truth["ra"][k], truth["dec"][k])
        assert last["diaObject"]["diaObjectId"] == object_ids[k]
        assert last["diaSource"]["diaObjectId"] == object_ids[k]
        prv, forced = last["prvDiaSources"], last["prvDiaForcedSources"]
        assert len(prv) == N_VISITS - 1 and len(forced) == N_VISITS - 1
        for rows in (prv, forced):
            mjd = [r["midpointMjdTai"] for r in rows]
            assert mjd == sorted(mjd)
            pull = np.array(
                [(r["psfFlux"] - truth["flux"][k, v]) / r["psfFluxErr"] for v, r in enumerate(rows)]
            )
            assert np.all(np.abs(pull) < 5.0), pull
    # Pulls over every variable and visit: mean within 5 sigma/sqrt(N) of 0, spread ~1.
    pulls = []
    for k in variables:
        _, forced = db.light_curve(object_ids[k])
        pulls += [
            (f["psfFlux"] - truth["flux"][k, v]) / f["psfFluxErr"] for v, f in enumerate(forced)
        ]
    pulls = np.array(pulls)
    assert abs(pulls.mean()) < 5 / np.sqrt(len(pulls)) + 0.3  # + PSF-model bias allowance
    assert 0.5 < pulls.std() < 2.0

    # Reprocessing every visit: same ids, no new diaSource or diaObject, and forced photometry
    # of the transient on the three visits before it appeared, consistent with zero.
    before = db.stats()
    again = _process(url, template, visits, seq)
    after = db.stats()
    assert (after["DiaObject"], after["DiaSource"]) == (before["DiaObject"], before["DiaSource"])
    for first, second in zip(per_visit, again, strict=True):
        assert [a["diaObject"]["diaObjectId"] for a in first] == [
            a["diaObject"]["diaObjectId"] for a in second
        ]
    transient = len(truth["kind"]) - 1
    _, forced = db.light_curve(object_ids[transient])
    early = [f for f in forced if f["midpointMjdTai"] < seq.visits[3].mjd_mid - 1e-6]
    assert len(early) == 3
    for f in early:
        assert abs(f["psfFlux"]) < 5 * f["psfFluxErr"]
    third = _process(url, template, visits, seq, which=[0, 5])
    assert db.stats() == after  # a second replay writes nothing at all
    assert third[1][0]["diaObject"]["diaObjectId"] == again[5][0]["diaObject"]["diaObjectId"]

    # An alert with history, read with the official schema: diaObject and history non-null.
    (last,) = _near(per_visit[-1], truth["ra"][variables[0]], truth["dec"][variables[0]])
    official = lsst_packet.Schema.from_file().definition
    back = deserialize_alert(serialize_alert(last), reader_schema=official)
    assert "diffstreamMetadata" not in back
    assert back["diaObject"]["diaObjectId"] == object_ids[variables[0]]
    assert len(back["prvDiaSources"]) == N_VISITS - 1
    assert len(back["prvDiaForcedSources"]) == N_VISITS - 1

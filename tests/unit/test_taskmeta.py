import time

import pytest

from diffstream.stream.ops.errors import BadExposure, NoWorkFound
from diffstream.stream.provenance.taskmeta import TaskMetadata

pytestmark = pytest.mark.unit


def test_timer_nesting_and_names():
    meta = TaskMetadata("imageDifference")
    with meta.timer():
        with meta.timer("warp"):
            with meta.timer("grid"):
                time.sleep(0.01)
        with meta.timer("zogy"):
            pass
    t = meta.timings()
    assert list(t) == [
        "imageDifference",
        "imageDifference.warp",
        "imageDifference.warp.grid",
        "imageDifference.zogy",
    ]
    assert t["imageDifference.warp"] >= t["imageDifference.warp.grid"] >= 0.01
    assert t["imageDifference"] >= t["imageDifference.warp"]
    full = meta.full_metadata()
    assert "imageDifference:warp:grid.wallTime" in full
    assert "imageDifference:warp.startMaxResidentSetSize" in full
    assert full["imageDifference:warp.endCpuTime"] >= full["imageDifference:warp.startCpuTime"]


def test_timer_records_even_when_step_raises():
    meta = TaskMetadata()
    with pytest.raises(RuntimeError):
        with meta.timer("boom"):
            raise RuntimeError("x")
    assert "imageDifference.boom" in meta.timings()
    assert meta.current == "imageDifference"


def test_decorator_and_items():
    meta = TaskMetadata("top")

    @meta.timed("step")
    def f(x):
        meta.set("seen", x)
        return x * 2

    assert f(3) == 6
    assert meta.get("seen", step="top.step") == 3
    assert meta.full_metadata()["top:step.seen"] == 3


def test_error_records_carry_stage_kind_and_fields():
    err = BadExposure("not a FITS file", path="/data/x.fits", reason="truncated")
    rec = err.to_record()
    assert rec["kind"] == "bad_exposure" and rec["stage"] == "process"
    assert rec["fields"]["path"] == "/data/x.fits"
    assert "/data/x.fits" in rec["message"]
    nw = NoWorkFound("template covers 4.0% < required 10%", coverage=0.04)
    assert nw.exit_code == 3 and nw.to_record()["kind"] == "no_work"
    with pytest.raises(ValueError, match="stage must be one of"):
        BadExposure("x", stage="nowhere")

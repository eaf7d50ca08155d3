"""Images too small to process are bad input (issue 16): BadExposure naming the file and the
reason, exit 2 offline, a dead letter with the path in the stream.  Before, a 1 x N image
raised ``ValueError: jacobian must be finite`` from the warp (a traceback, exit 1 offline; a
``kernel_failure`` dead letter without the path in the stream)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from astropy.io import fits

from diffstream.stream.cli.main import main
from diffstream.stream.ops.errors import BadExposure
from diffstream.stream.ops.settings import Settings
from diffstream.stream.pipeline.subtract import MIN_IMAGE_SIDE, subtract_files
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from diffstream.stream.transport.events import encode_event, make_event
from diffstream.stream.transport.records import decode_dead_letter
from diffstream.stream.transport.service import SourceMessage, Worker

pytestmark = pytest.mark.unit

# (name, rows, columns) cut from the 256 x 256 science; the PSF stamp is 17 x 17.
SMALL = [("1xN", slice(100, 101), slice(None)), ("Nx1", slice(None), slice(100, 101)),
         ("8x8", slice(100, 108), slice(100, 108)),
         ("16x16", slice(100, 116), slice(100, 116))]  # fmt: skip


def crop_fits(src: Path, dst: Path, rows: slice, cols: slice) -> Path:
    """A copy of an exposure with every image plane cut to ``[rows, cols]`` (the WCS shifted
    with it), other HDUs (the PSF stamp) unchanged."""
    with fits.open(src) as hdul:
        for hdu in hdul:
            if hdu.name in ("IMAGE", "MASK", "VARIANCE") and hdu.data is not None:
                hdu.data = hdu.data[rows, cols]
                for axis, sl in (("1", cols), ("2", rows)):
                    if f"CRPIX{axis}" in hdu.header and sl.start:
                        hdu.header[f"CRPIX{axis}"] -= sl.start
        hdul.writeto(dst, overwrite=True)
    return dst


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    sci, tmpl = write_pair(simulate_pair(seed=21, shape=(256, 256), n_stars=60,
                                         n_transients=8), root / "p")  # fmt: skip
    for name, rows, cols in SMALL:
        crop_fits(sci, root / f"sci_{name}.fits", rows, cols)
        crop_fits(tmpl, root / f"tmpl_{name}.fits", rows, cols)
    return root


@pytest.mark.parametrize("name", [n for n, *_ in SMALL])
@pytest.mark.parametrize("side", ["science", "template"])
def test_too_small_images_are_bad_exposures(small_dir, name, side):
    sci, tmpl = small_dir / "p" / "science.fits", small_dir / "p" / "template.fits"
    if side == "science":
        sci = small_dir / f"sci_{name}.fits"
    else:
        tmpl = small_dir / f"tmpl_{name}.fits"
    bad = sci if side == "science" else tmpl
    with pytest.raises(BadExposure, match=rf"{side} image \d+ x \d+ px is too small") as info:
        subtract_files(str(sci), str(tmpl), settings=Settings(), visit=1, detector=1,
                       exposure_id=1)  # fmt: skip
    err = info.value
    assert err.fields["path"] == str(bad) and err.fields["reason"] == "too_small"
    assert str(bad) in err.message and err.exit_code == 2


def test_the_smallest_accepted_side_is_the_psf_stamp_or_the_floor(small_dir):
    assert MIN_IMAGE_SIDE == 16
    # 16 x 16 passes the floor but not the 17 x 17 PSF stamp of the simulated exposures.
    with pytest.raises(BadExposure, match=">= 17 px"):
        subtract_files(str(small_dir / "sci_16x16.fits"), str(small_dir / "p" / "template.fits"),
                       settings=Settings(), visit=1, detector=1, exposure_id=1)  # fmt: skip


def test_offline_subtract_of_a_1xn_image_exits_2_with_the_path(small_dir, tmp_path, capsys):
    sci = small_dir / "sci_1xN.fits"
    rc = main(["subtract", str(sci), str(small_dir / "p" / "template.fits"),
               "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"diffstream: error: {sci}: science image 256 x 1 px is too small" in err
    assert "Traceback" not in err
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert json.dumps(meta).count("too_small") >= 1


def test_a_1xn_event_is_a_bad_exposure_dead_letter_with_its_path(small_dir, caplog):
    sci = small_dir / "sci_1xN.fits"
    event = make_event(str(sci), str(small_dir / "p" / "template.fits"), visit=5, detector=7,
                       exposure_id=99, request_id="req-small")  # fmt: skip
    worker = Worker(Settings(data_roots=[str(small_dir)]), worker="test:1")
    out = worker.process(SourceMessage(value=encode_event(event), topic="in", partition=0,
                                       offset=4))  # fmt: skip
    assert out.status == "failed" and out.dead_letter is not None
    rec = decode_dead_letter(out.dead_letter.value)
    assert rec["kind"] == "bad_exposure", rec
    assert str(sci) in rec["message"] and json.loads(rec["fieldsJson"])["path"] == str(sci)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], "no ERROR traceback"

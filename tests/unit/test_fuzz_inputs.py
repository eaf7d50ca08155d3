"""Bounded fuzzing of the two doors bad input comes through (issue 16): the FITS loader and
the event decoder.  Hypothesis mutates real inputs (a simulated exposure, a valid event):
flipped bytes, truncations, splices.  The rule: nothing escapes but a typed error
(BadExposure/NotCalibrated from the loader, BadEvent from the decoder); no ValueError,
IndexError or astropy exception as a traceback.  Budget: a few seconds each, every run
(``make test``'s ci profile draws the same examples each time; ``dev`` draws new ones)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffstream.stream.io.fitsio import load_exposure
from diffstream.stream.ops.errors import BadEvent, DiffstreamError
from diffstream.stream.sim.simulate import simulate_pair, write_pair
from diffstream.stream.transport.events import decode_event, encode_event, make_event

pytestmark = pytest.mark.unit

_BUDGET = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def fits_bytes(tmp_path_factory) -> bytes:
    root = tmp_path_factory.mktemp("fuzz")
    sci, _ = write_pair(simulate_pair(seed=31, shape=(256, 256), n_stars=60, n_transients=8),
                        root / "p", truth_csv=False)  # fmt: skip
    return sci.read_bytes()


# A FITS file is 2880-byte blocks of 80-character header cards, then the data: mutations at
# random offsets mostly hit pixel data, so the header blocks of each HDU get their own share.
_mutation = st.tuples(
    st.sampled_from(["flip", "truncate", "splice", "header"]),
    st.integers(min_value=0, max_value=10**9),
    st.binary(min_size=1, max_size=80),
)


def _mutate(raw: bytes, how: str, where: int, junk: bytes) -> bytes:
    n = len(raw)
    if n == 0:  # an earlier mutation truncated everything: only a splice can add bytes
        return junk if how not in ("truncate", "flip") else raw
    if how == "truncate":
        return raw[: where % n]
    if how == "flip":
        i = where % n
        return raw[:i] + bytes([raw[i] ^ (junk[0] or 1)]) + raw[i + 1 :]
    if how == "header":  # overwrite part of a header card of some HDU
        blocks = [i for i in range(0, n, 2880) if raw[i : i + 8].strip() and raw[i] < 128]
        i = blocks[where % len(blocks)] + (where // 7) % 2880
        return raw[:i] + junk + raw[i + len(junk) :]
    i = where % n
    return raw[:i] + junk + raw[i:]


@_BUDGET
@given(mutations=st.lists(_mutation, min_size=1, max_size=3))
def test_the_fits_loader_raises_only_typed_errors(fits_bytes, tmp_path, mutations):
    raw = fits_bytes
    for how, where, junk in mutations:
        raw = _mutate(raw, how, where, junk) or b"\0"
    path = tmp_path / "fuzzed.fits"
    path.write_bytes(raw)
    try:
        load_exposure(path, allow_uncalibrated=True)
    except DiffstreamError as exc:
        assert exc.kind in ("bad_exposure", "bad_event"), exc.kind
        assert str(path) in exc.message


@_BUDGET
@given(data=st.binary(max_size=3000))
def test_the_fits_loader_on_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "junk.fits"
    path.write_bytes(data)
    with pytest.raises(DiffstreamError):
        load_exposure(path)


def _event() -> bytes:
    return encode_event(make_event("/data/s.fits", "/data/t.fits", visit=5, detector=7,
                                   exposure_id=99, request_id="req-1"))  # fmt: skip


@_BUDGET
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_the_event_decoder_on_mutated_events_raises_only_bad_event(mutations):
    raw = _event()
    for how, where, junk in mutations:
        raw = _mutate(raw, how if how != "header" else "splice", where, junk)
    try:
        event = decode_event(raw)
    except BadEvent as exc:
        assert exc.fields.get("reason") in ("not_bytes", "undecodable", "unknown_schema",
                                            "invalid"), exc.fields  # fmt: skip
    else:  # a mutation that still decodes is a valid event
        assert isinstance(event["visit"], int) and event["scienceLocation"]


def test_a_fits_mutation_really_reaches_the_header():
    # The premise of the "header" mutation: it lands inside the first header block.
    raw = b"SIMPLE  =                    T" + b" " * (2880 - 30) + b"\0" * 2880
    out = _mutate(raw, "header", 10, b"XXXX")
    assert out[:2880] != raw[:2880] and out[2880:] == raw[2880:]

"""jitcore.sources: the one sep wrapper (per-call settings, thread-safe) and the one star finder."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sep

from diffstream.jitcore.psf import gaussian_psf
from diffstream.jitcore.sources import extract

pytestmark = pytest.mark.unit


def _field(seed: int, n: int, shape=(300, 300)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, 1.0, shape)
    stamp = gaussian_psf(1.5, 15)
    for x, y in rng.uniform(10, shape[0] - 10, (n, 2)):
        ix, iy = int(x), int(y)
        img[iy - 7 : iy + 8, ix - 7 : ix + 8] += rng.uniform(200, 2000) * stamp
    return np.ascontiguousarray(img)


def test_settings_are_per_call_and_restored():
    before = (sep.get_extract_pixstack(), sep.get_sub_object_limit())
    img = np.zeros((200, 200))
    img[20:180, 20:180] = 10.0  # 25600 active pixels: more than a 1000-pixel buffer
    sep.set_extract_pixstack(1000)
    try:
        objs = extract(img, 5.0, err=1.0, filter_kernel=None)
        assert len(objs) == 1 and objs["npix"][0] == 160 * 160
        assert sep.get_extract_pixstack() == 1000
        assert sep.get_sub_object_limit() == before[1]
    finally:
        sep.set_extract_pixstack(before[0])


def test_small_start_buffer_grows_to_the_same_catalogue(monkeypatch):
    # The buffer's start size is a cost, never a result: an overflow redoes the extraction
    # with a 4x buffer.  The premise is checked: the small start did overflow (sep called
    # more than once).
    from diffstream.jitcore import sources

    img = _field(5, 60)
    img[150:250, 20:120] += 20.0  # one 10^4-pixel source: past a 300^2 / 16 = 5625-pixel start
    want = extract(img, 3.0, err=1.0, deblend=True, segmentation_map=True)
    calls = []
    real = sep.extract

    def counting(*args, **kwargs):
        calls.append(sep.get_extract_pixstack())
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, "_MIN_PIXSTACK", 64)  # the start is then size // 16
    monkeypatch.setattr(sources.sep, "extract", counting)
    got = extract(img, 3.0, err=1.0, deblend=True, segmentation_map=True)
    assert len(calls) == 2 and calls == [img.size // 16, 4 * (img.size // 16)]
    assert len(got[0]) == len(want[0]) > 20
    for name in want[0].dtype.names:
        np.testing.assert_array_equal(got[0][name], want[0][name])
    np.testing.assert_array_equal(got[1], want[1])


def test_threads_get_what_a_lone_call_gets():
    # Different configurations on 8 threads at once (filter on/off, deblend on/off, two
    # thresholds): each result must equal the same call made alone.
    images = [_field(seed, 60) for seed in range(4)]
    configs = [
        {"filter_kernel": None, "deblend": False},
        {"deblend": True},
        {"filter_kernel": None, "deblend": True, "minarea": 3},
        {},
    ]
    jobs = [(i, c, t) for i in range(4) for c in range(4) for t in (3.0, 8.0)]

    def run(job):
        i, c, t = job
        return extract(images[i], t, err=1.0, **configs[c])

    alone = [run(j) for j in jobs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, jobs * 3))
    for k, got in enumerate(together):
        ref = alone[k % len(jobs)]
        assert len(got) == len(ref)
        np.testing.assert_array_equal(got["x"], ref["x"])
        np.testing.assert_array_equal(got["npix"], ref["npix"])


def test_failure_is_a_value_error():
    with pytest.raises(ValueError, match="source extraction failed"):
        extract(np.zeros((4, 4, 4)), 1.0, err=1.0)  # sep takes 2-D arrays only

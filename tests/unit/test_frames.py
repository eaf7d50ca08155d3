"""jitcore.tiles frame helpers against plain NumPy: fill_frame's kernel and stamp_spectrum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from scipy import fft as sfft

from diffstream.jitcore.tiles import (
    crop_centred,
    embed_centred,
    fill_frame,
    footprint_radii,
    footprint_radius,
    overlap,
    stamp_spectra,
    stamp_spectrum,
)


def fill_frame_reference(image, good, oy, ox, out):
    """The obvious version: zero the frame, copy the good pixels of the overlap."""
    y0, y1, x0, x1 = overlap(image.shape, oy, ox, *out.shape)
    out.fill(0.0)
    if y1 > y0 and x1 > x0:
        dst = out[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        np.copyto(dst, image[y0:y1, x0:x1], where=good, casting="unsafe")


@settings(max_examples=60, deadline=None)
@given(
    ny=st.integers(1, 40),
    nx=st.integers(1, 40),
    fy=st.integers(1, 30),
    fx=st.integers(1, 30),
    oy=st.integers(-35, 45),
    ox=st.integers(-35, 45),
    seed=st.integers(0, 2**32 - 1),
    img_dtype=st.sampled_from([np.float32, np.float64]),
    out_dtype=st.sampled_from([np.float32, np.float64]),
)
def test_fill_frame_matches_reference(ny, nx, fy, fx, oy, ox, seed, img_dtype, out_dtype):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(ny, nx)).astype(img_dtype)
    image[rng.random((ny, nx)) < 0.1] = np.nan  # under good=False they must not leak
    y0, y1, x0, x1 = overlap(image.shape, oy, ox, fy, fx)
    good = rng.random((max(y1 - y0, 0), max(x1 - x0, 0))) < 0.8
    if y1 > y0 and x1 > x0:
        good &= np.isfinite(image[y0:y1, x0:x1])
    out = np.full((fy, fx), 7.0, out_dtype)  # stale values must all be overwritten
    ref = np.full((fy, fx), 7.0, out_dtype)
    fill_frame(image, good, oy, ox, out)
    fill_frame_reference(image, good, oy, ox, ref)
    assert_array_equal(out, ref)


def test_fill_frame_other_dtypes_take_numpy_path():
    image = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = np.full((5, 5), 9.0)
    good = np.ones((3, 4), bool)
    good[1, 1] = False
    fill_frame(image, good, -1, -1, out)
    ref = np.full((5, 5), 9.0)
    fill_frame_reference(image, good, -1, -1, ref)
    assert_array_equal(out, ref)


@pytest.mark.parametrize(
    ("shape", "k"),
    [((540, 540), 25), ((540, 540), 1), ((61, 60), 25), ((61, 60), 3), ((32, 45), 15),
     ((15, 16), 15), ((15, 16), 5)],
)  # fmt: skip
def test_stamp_spectrum_equals_rfft2_of_the_frame(shape, k):
    stamp = np.random.default_rng(k).normal(size=(k, k))
    frame = np.empty(shape)
    embed_centred(stamp, frame)
    ref = sfft.rfft2(frame)
    got = stamp_spectrum(stamp, shape)
    assert got.shape == ref.shape and got.dtype == np.complex128
    assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(stamp).sum())


@pytest.mark.parametrize(("shape", "k"), [((576, 576), 65), ((61, 60), 25), ((15, 16), 15)])
def test_stamp_spectrum_single_precision(shape, k):
    # ZOGY's kernel squares in single-precision frames: complex64, equal to the float32
    # frame's rfft2 to float32 rounding.
    stamp = np.random.default_rng(k).random((k, k))
    frame = np.empty(shape, np.float32)
    embed_centred(stamp.astype(np.float32), frame)
    ref = sfft.rfft2(frame)
    got = stamp_spectrum(stamp, shape, real=np.float32)
    assert got.shape == ref.shape and got.dtype == np.complex64
    assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(stamp).sum())


@pytest.mark.parametrize("real", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(64, 64), (45, 50), (33, 31)])
def test_stamp_spectra_stack_the_single_spectra(shape, real):
    rng = np.random.default_rng(5)
    stamps = [rng.normal(size=(k, k)) for k in (3, 11, 29, 1)]
    got = stamp_spectra(stamps, shape, real=real)
    assert got.shape == (4, shape[0], shape[1] // 2 + 1)
    assert got.dtype == (np.complex64 if real is np.float32 else np.complex128)
    for plane, stamp in zip(got, stamps, strict=True):
        assert plane.flags.c_contiguous
        frame = np.zeros(shape)
        embed_centred(stamp, frame)
        tol = 1e-5 if real is np.float32 else 1e-12
        assert_allclose(plane, sfft.rfft2(frame), rtol=tol, atol=tol * np.abs(stamp).sum())


def footprint_reference(kernels, rmax, tol):
    """The obvious loop: grow a centred square until it holds all but tol of each sum |k|."""
    radius = 0
    for k in kernels:
        a = np.abs(crop_centred(k, rmax))
        total = a.sum()
        if not total > 0:
            continue
        r = next((r for r in range(rmax + 1)
                  if total - a[rmax - r : rmax + r + 1, rmax - r : rmax + r + 1].sum()
                  <= tol * total), rmax)  # fmt: skip
        radius = max(radius, r)
    return radius


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rmax=st.integers(0, 12), width=st.floats(0.3, 6.0))
def test_footprint_radii_match_the_growing_square(seed, rmax, width):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-20:20, -20:20]
    kernels = []
    for _ in range(2):  # Gaussian-ish kernels with noisy wings, one with a negative lobe
        k = np.exp(-(x**2 + y**2) / (2 * width**2)) + 1e-4 * rng.normal(size=x.shape)
        kernels.append(np.fft.ifftshift(k - 0.3 * np.exp(-(x**2 + y**2) / (8 * width**2))))
    kernels.append(np.zeros((40, 40)))  # no weight: ignored
    radii = footprint_radii(kernels, rmax)
    for tol in (1e-1, 1e-2, 1e-3, 1e-4):
        want = footprint_reference(kernels, rmax, tol)
        assert radii(tol) == want
        assert footprint_radius(kernels, rmax, tol=tol) == want

"""jitcore.fft (ducc0's transforms behind scipy.fft's conventions) against numpy.fft."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from diffstream.jitcore import fft as frame_fft

pytestmark = pytest.mark.unit

SHAPES = [(540, 540), (61, 60), (15, 16), (7, 1), (1, 9)]
TOL = {np.float32: 2e-6, np.float64: 1e-13}  # relative to the transform's scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_rfft2_and_irfft2_match_numpy(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    a = rng.normal(size=(3, *shape)).astype(dtype)  # a stack: transformed frame by frame
    spec = frame_fft.rfft2(a)
    assert spec.dtype == (np.complex64 if dtype is np.float32 else np.complex128)
    want = np.fft.rfft2(a.astype(np.float64))
    scale = np.sqrt(a[0].size) * np.abs(a).max()
    assert_allclose(spec, want, rtol=0, atol=TOL[dtype] * scale)
    back = frame_fft.irfft2(spec.copy(), shape)
    assert back.dtype == dtype and back.shape == a.shape
    assert_allclose(back, np.fft.irfft2(want, s=shape), rtol=0, atol=TOL[dtype] * 10)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_rows_and_axis_transforms_match_numpy(dtype):
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(5, 30))
    assert_allclose(frame_fft.rfft_rows(rows), np.fft.rfft(rows, axis=-1), rtol=0, atol=1e-12)
    a = (rng.normal(size=(4, 27, 9)) + 1j * rng.normal(size=(4, 27, 9))).astype(dtype)
    want = np.fft.fft(a.astype(np.complex128), axis=1)
    got = frame_fft.fft_axis(a, 1)
    assert got is a or np.shares_memory(got, a)  # in place
    tol = 1e-5 if dtype is np.complex64 else 1e-12
    assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def test_checks():
    with pytest.raises(ValueError, match="does not match frame shape"):
        frame_fft.irfft2(np.zeros((8, 5), np.complex64), (8, 10))

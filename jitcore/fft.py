"""Frame FFTs for the tiled transforms: ducc0's, behind scipy.fft's conventions.

ZOGY spends over half its time in frame-sized FFTs (540^2 at 4k: nine per tile plus four
kernel-square spectra).  ducc0 is the successor of the pocketfft that scipy.fft bundles (same
author, same algorithms, newer code: SIMD across transforms, better cache use); it did the
same transforms ~1.3-1.4x faster here (540^2 float32: rfft2 0.41 ms against 0.58, irfft2
0.44-0.48 against 0.60; ZOGY on the stream's 4k pair: 0.78 CPU-s against 0.99, issue 17),
with results equal to rounding (tests/unit/test_fft.py against numpy.fft).  Only the
transforms on the hot path come through here: rfft2 / irfft2 over the last two axes, a real
FFT along rows, a complex FFT along an axis (ZOGY's and the AL decorrelation's tiles, AL's
tiled convolutions and stamp systems); everything else keeps scipy.fft, including
``next_fast_len`` (ducc0's transforms are fast for the same lengths).

Every transform runs on one thread: parallelism comes from the callers' tiles.  Why not
ducc0's threads: it splits a multi-threaded transform differently, so the last bits of the
result would depend on the thread count, and a worker's alerts must be the same whatever its
CPU share (a 256^2 image, one ZOGY tile, gave S_corr differing by 5e-6 and RA by 5e-12 deg
between 1 and 2 threads; tests/unit/test_zogy.py::test_threads_give_identical_results).
ducc0 is imported on first use, so that importing jitcore costs nothing for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rfft2", "irfft2", "rfft_rows", "fft_axis"]


def _ducc() -> Any:
    import ducc0  # lazy: start-up time is budgeted

    return ducc0.fft


def rfft2(a: np.ndarray) -> np.ndarray:
    """``scipy.fft.rfft2(a)`` over the last two axes (float32 in: complex64 out)."""
    return _ducc().r2c(a, axes=(-2, -1))


def irfft2(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``scipy.fft.irfft2(a, s=shape)`` over the last two axes; ``a`` may be overwritten."""
    if a.shape[-2] != shape[0] or a.shape[-1] != shape[1] // 2 + 1:
        raise ValueError(f"spectrum shape {a.shape[-2:]} does not match frame shape {shape}")
    return _ducc().c2r(a, axes=(-2, -1), lastsize=int(shape[1]), forward=False, inorm=2,
                       allow_overwriting_input=True)  # fmt: skip


def rfft_rows(a: np.ndarray) -> np.ndarray:
    """``scipy.fft.rfft(a, axis=-1)``."""
    return _ducc().r2c(a, axes=(-1,))


def fft_axis(a: np.ndarray, axis: int) -> np.ndarray:
    """``scipy.fft.fft(a, axis=axis)``, in place in ``a`` (complex64 or complex128)."""
    return _ducc().c2c(a, axes=(axis,), out=a)

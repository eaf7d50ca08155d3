"""The ZOGY Numba kernels against slow, obviously-correct NumPy references.

Each kernel runs over float32/complex64 and float64/complex128 and odd shapes; Hypothesis
draws shapes and seeds on a small budget.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from diffstream.jitcore._kernels.zogy import (
    zogy_core,
    zogy_denominator,
    zogy_finalize,
    zogy_frame_spectra,
    zogy_spectral_kernels,
)

pytestmark = pytest.mark.unit

DTYPES = {np.float32: np.complex64, np.float64: np.complex128}
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
shapes = st.tuples(st.integers(1, 9), st.integers(1, 9))
seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float32, np.float64])
budget = settings(max_examples=25, deadline=None)


def cplx(rng, shape, ctype):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(ctype)


# --- NumPy references ------------------------------------------------------------------


def ref_denominator(pn, pr, a_n, a_r, floor):
    return np.maximum(a_n * np.abs(pr) ** 2 + a_r * np.abs(pn) ** 2, floor)


def ref_kernels(pn, pr, b, f_n, f_r):
    kdn = f_r * pr / np.sqrt(b)
    kdr = f_n * pn / np.sqrt(b)
    kn = f_n * f_r**2 * np.conj(pn) * np.abs(pr) ** 2 / b
    kr = f_r * f_n**2 * np.conj(pr) * np.abs(pn) ** 2 / b
    return kdn, kdr, kn, kr


def ref_extra(sn, sr, sx2, sy2, e2):
    def grads(a):
        gy = np.gradient(a, axis=0) if a.shape[0] > 1 else np.zeros_like(a)
        gx = np.gradient(a, axis=1) if a.shape[1] > 1 else np.zeros_like(a)
        return gy, gx

    gyn, gxn = grads(sn.astype(np.float64))
    gyr, gxr = grads(sr.astype(np.float64))
    return sx2 * (gxn**2 + gxr**2) + sy2 * (gyn**2 + gyr**2) + e2 * (sn**2.0 + sr**2.0)


# --- tests -----------------------------------------------------------------------------


@budget
@given(shape=shapes, seed=seeds, dtype=dtypes)
def test_denominator(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    ctype = DTYPES[dtype]
    pn, pr = cplx(rng, shape, ctype), cplx(rng, shape, ctype)
    pn.flat[0] = 0  # both transforms 0 at one frequency: the floor applies
    pr.flat[0] = 0
    out = np.empty(shape, dtype)
    zogy_denominator(pn, pr, 2.5, 0.7, 1e-3, out)
    assert_allclose(out, ref_denominator(pn, pr, 2.5, 0.7, 1e-3), rtol=RTOL[dtype])
    assert out.flat[0] == pytest.approx(1e-3, rel=1e-6)


@budget
@given(shape=shapes, seed=seeds, dtype=dtypes)
def test_spectral_kernels(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    ctype = DTYPES[dtype]
    pn, pr = cplx(rng, shape, ctype), cplx(rng, shape, ctype)
    b = rng.uniform(0.5, 2.0, shape).astype(dtype)
    outs = [np.empty(shape, ctype) for _ in range(4)]
    zogy_spectral_kernels(pn, pr, b, 1.3, 0.8, *outs)
    for got, want in zip(outs, ref_kernels(pn, pr, b, 1.3, 0.8), strict=True):
        assert_allclose(got, want, rtol=RTOL[dtype] * 10, atol=RTOL[dtype])


@budget
@given(shape=shapes, seed=seeds)
def test_spectral_kernels_into_single_precision(shape, seed):
    # Double-precision spectra in, complex64 kernels out (ZOGY's single precision): the
    # double-precision kernels rounded once, exactly what .astype(np.complex64) gives.
    rng = np.random.default_rng(seed)
    pn, pr = cplx(rng, shape, np.complex128), cplx(rng, shape, np.complex128)
    b = rng.uniform(0.5, 2.0, shape)
    narrow = [np.empty(shape, np.complex64) for _ in range(4)]
    wide = [np.empty(shape, np.complex128) for _ in range(4)]
    zogy_spectral_kernels(pn, pr, b, 1.3, 0.8, *narrow)
    zogy_spectral_kernels(pn, pr, b, 1.3, 0.8, *wide)
    for got, want in zip(narrow, wide, strict=True):
        assert_array_equal(got, want.astype(np.complex64))


@budget
@given(
    h=st.integers(1, 9), w=st.integers(1, 9), b=st.integers(1, 3), parts=st.booleans(),
    seed=seeds, dtype=dtypes,
)  # fmt: skip
def test_core_matches_references(h, w, b, parts, seed, dtype):
    # The fused core against the NumPy gradient reference and the finalize rules, on frames
    # holding the core at [b, b + h) x [b, b + w) and whole output images with it at (y0, x0).
    rng = np.random.default_rng(seed)
    fh, fw = h + 2 * b + rng.integers(0, 3), w + 2 * b + rng.integers(0, 3)
    d, s_n, s_r = (rng.normal(size=(fh, fw)).astype(dtype) for _ in range(3))
    vd = rng.uniform(0.5, 2, (fh, fw)).astype(dtype)
    vs = rng.uniform(0.5, 2, (fh, fw)).astype(dtype)
    vd[b + h - 1, b + w - 1] = 0.0  # a non-positive variance invalidates the pixel
    vs[b, b] = np.nan
    ny, nx, y0, x0 = h + 5, w + 4, 2, 3
    valid = rng.uniform(size=(ny, nx)) > 0.2
    before = valid.copy()
    outs = [np.full((ny, nx), 7.0, np.float32) for _ in range(5)]
    sx2, sy2, e2 = 0.04, 0.09, 0.01
    zogy_core(d, vd, vs, s_n, s_r, parts, b, h, w, sx2, sy2, e2, valid, y0, x0, 0.3, 0.02,
              *outs)  # fmt: skip
    core = (slice(b, b + h), slice(b, b + w))
    win = (slice(b - 1, b + h + 1), slice(b - 1, b + w + 1))
    if parts:
        vx = ref_extra(s_n[win], s_r[win], sx2, sy2, e2)[1:-1, 1:-1]
        s = s_n[core].astype(np.float64) - s_r[core]
    else:
        vx = np.zeros((h, w))
        s = s_n[core].astype(np.float64)
    vt = vs[core].astype(np.float64) + vx
    out_core = (slice(y0, y0 + h), slice(x0, x0 + w))
    ok = before[out_core] & (vd[core] > 0) & np.isfinite(vt)
    assert_array_equal(valid[out_core], ok)
    outside = np.ones((ny, nx), bool)
    outside[out_core] = False
    assert_array_equal(valid[outside], before[outside])  # only the core is touched
    diff, diffvar, score, flux, fluxvar = (o[out_core] for o in outs)
    tol = {"rtol": 1e-5, "atol": 1e-6}
    assert_allclose(diff[ok], (d[core] / 0.3)[ok], **tol)
    assert_allclose(diffvar[ok], (vd[core] / 0.3**2)[ok], **tol)
    assert_allclose(score[ok], (s / np.sqrt(vt))[ok], **tol)
    assert_allclose(flux[ok], (s / 0.02)[ok], **tol)
    assert_allclose(fluxvar[ok], (vt / 0.02**2)[ok], **tol)
    for a in (diff, score, flux):
        assert np.all(a[~ok] == 0)
    for a in (diffvar, fluxvar):
        assert np.all(np.isnan(a[~ok]))
    for o in outs:
        assert np.all(o[outside] == 7.0)


@budget
@given(shape=shapes, seed=seeds, dtype=dtypes)
def test_finalize(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    d, s = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
    vd = rng.uniform(0.5, 2, shape).astype(dtype)
    vs = rng.uniform(0.5, 2, shape).astype(dtype)
    vx = rng.uniform(0, 0.1, shape).astype(dtype)
    valid = rng.uniform(size=shape) > 0.2
    vd.flat[-1] = 0.0  # a non-positive variance invalidates the pixel
    if vs.size > 1:
        vs.flat[0] = np.nan
    ok = valid & (vd > 0) & np.isfinite(vs)
    f_d, f_s = 0.3, 0.02
    outs = [np.full(shape, 7.0, np.float32) for _ in range(5)]
    v = valid.copy()
    zogy_finalize(d, vd, s, vs, vx, v, f_d, f_s, *outs)
    diff, diffvar, score, flux, fluxvar = outs
    vt = vs.astype(np.float64) + vx
    assert np.array_equal(v, ok)
    assert_allclose(diff[ok], (d / f_d)[ok], rtol=1e-6)
    assert_allclose(diffvar[ok], (vd / f_d**2)[ok], rtol=1e-6)
    assert_allclose(score[ok], (s / np.sqrt(vt))[ok], rtol=1e-6)
    assert_allclose(flux[ok], (s / f_s)[ok], rtol=1e-6)
    assert_allclose(fluxvar[ok], (vt / f_s**2)[ok], rtol=1e-6)
    for a in (diff, score, flux):
        assert np.all(a[~ok] == 0)
    for a in (diffvar, fluxvar):
        assert np.all(np.isnan(a[~ok]))


@budget
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 10)), nb=st.integers(1, 4),
    nr=st.integers(1, 4), parts=st.booleans(), seed=seeds, dtype=dtypes,
)  # fmt: skip
def test_frame_spectra_matches_references(shape, nb, nr, parts, seed, dtype):
    """The fused pass against the separate references: PSF spectra as basis combinations,
    B, the kernels, the five products and F_S as the full-plane mean of the real frames."""
    rng = np.random.default_rng(seed)
    ctype = DTYPES[dtype]
    ny, nx = shape
    # PSF spectra from real frames, so that F_S has its full-plane NumPy mean to compare to.
    frames_n, frames_r = rng.normal(size=(nb, ny, nx)), rng.normal(size=(nr, ny, nx))
    cn, cr = rng.normal(size=nb), rng.normal(size=nr)
    spec_n = np.fft.rfft2(frames_n)
    spec_r = np.fft.rfft2(frames_r)
    bn = np.ascontiguousarray(np.stack([spec_n.real, spec_n.imag]))
    br = np.ascontiguousarray(np.stack([spec_r.real, spec_r.imag]))
    a_n, a_r, f_n, f_r = 2.5, 0.7, 1.3, 0.8
    floor = 1e-3
    half = (ny, nx // 2 + 1)
    xs = [cplx(rng, half, ctype) for _ in range(8)]
    outs = [np.full(half, 7.0, ctype) for _ in range(5)]
    got_fs = zogy_frame_spectra(bn, cn, br, cr, a_n, a_r, floor, f_n, f_r, nx, parts, *xs,
                                *outs, np.empty((9, half[1])))  # fmt: skip

    pn = np.tensordot(cn, spec_n, axes=1)
    pr = np.tensordot(cr, spec_r, axes=1)
    b = ref_denominator(pn, pr, a_n, a_r, floor)
    kdn, kdr, kn, kr = ref_kernels(pn, pr, b, f_n, f_r)
    xn, xr, xvn, xvr, kn2, kr2, kdn2, kdr2 = (x.astype(np.complex128) for x in xs)
    want = [kdn * xn - kdr * xr, kdn2 * xvn + kdr2 * xvr, kn2 * xvn + kr2 * xvr]
    want += [kn * xn, kr * xr] if parts else [kn * xn - kr * xr]
    for got, w in zip(outs, want, strict=False):
        # Each output against the magnitudes it is made of (a difference may cancel).
        scale = np.abs(kdn * xn) + np.abs(kdr * xr) + np.abs(kn * xn) + np.abs(kr * xr)
        scale += np.abs(kdn2 * xvn) + np.abs(kdr2 * xvr) + np.abs(kn2 * xvn) + np.abs(kr2 * xvr)
        assert np.all(np.abs(got - w) <= RTOL[dtype] * 10 * scale)
    if not parts:
        assert np.all(outs[4] == 7.0)  # S_r is not written without parts
    full_n = np.fft.fft2(np.tensordot(cn, frames_n, axes=1))
    full_r = np.fft.fft2(np.tensordot(cr, frames_r, axes=1))
    b_full = ref_denominator(full_n, full_r, a_n, a_r, floor)
    want_fs = np.mean(f_n**2 * f_r**2 * np.abs(full_n) ** 2 * np.abs(full_r) ** 2 / b_full)
    assert got_fs == pytest.approx(want_fs, rel=1e-10)

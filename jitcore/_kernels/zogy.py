"""ZOGY element-wise and stencil loops (Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27).

Allocation-free, no checks: :mod:`diffstream.jitcore.zogy` checks and allocates.  Spectra are the
``scipy.fft.rfft2`` half planes of one FFT frame; every loop is element-wise over them, so
the same code serves any frame shape.  Notation (paper eqs. 13-15, 25-26, 41-42):

    B    = a_n |P_r^|^2 + a_r |P_n^|^2,   a_n = sigma_n^2 F_r^2,  a_r = sigma_r^2 F_n^2
    kD_n = F_r P_r^ / sqrt(B),            kD_r = F_n P_n^ / sqrt(B)      (D = kD_n N - kD_r R)
    k_n  = F_n F_r^2 conj(P_n^) |P_r^|^2 / B,  k_r = F_r F_n^2 conj(P_r^) |P_n^|^2 / B
    F_S  = (1/npix) sum over the full plane of F_n^2 F_r^2 |P_n^|^2 |P_r^|^2 / B
"""

from __future__ import annotations

import math

from diffstream.jitcore._jit import njit

__all__ = [
    "zogy_denominator",
    "zogy_spectral_kernels",
    "zogy_finalize",
    "zogy_core",
    "zogy_frame_spectra",
]

_SPEC = ("complex64[:, :]", "complex128[:, :]")
_SPEC_C = ("complex64[:, ::1]", "complex128[:, ::1]")
_REAL = ("float32[:, :]", "float64[:, :]")


@njit(
    [f"void({c}, {c}, float64, float64, float64, {r})" for c, r in zip(_SPEC, _REAL, strict=True)]
)
def zogy_denominator(pn, pr, a_n, a_r, floor, out):
    """out = max(a_n |pr|^2 + a_r |pn|^2, floor).

    The floor guards frequencies where both PSF transforms vanish (beyond the band limit of
    two broad PSFs, or exact zeros of a measured PSF): there the ratios below are 0/0 and
    only rounding noise would be amplified.
    """
    ny, nx = out.shape
    for i in range(ny):
        for j in range(nx):
            a = pn[i, j]
            b = pr[i, j]
            pr2 = b.real * b.real + b.imag * b.imag
            pn2 = a.real * a.real + a.imag * a.imag
            v = a_n * pr2 + a_r * pn2
            out[i, j] = v if v > floor else floor


@njit(
    [
        f"void({c}, {c}, {r}, float64, float64, {o}, {o}, {o}, {o})"
        for c, r in zip(_SPEC, _REAL, strict=True)
        for o in _SPEC
    ]
)
def zogy_spectral_kernels(pn, pr, bden, f_n, f_r, kdn, kdr, kn, kr):
    """The four ZOGY kernels' spectra from the PSF spectra and B (see module docstring).

    The outputs may be narrower than the inputs (complex64 from complex128): computed in
    the inputs' precision, rounded once on the store, as a later astype would.
    """
    ny, nx = bden.shape
    for i in range(ny):
        for j in range(nx):
            a = pn[i, j]
            b = pr[i, j]
            den = bden[i, j]
            rs = 1.0 / math.sqrt(den)
            kdn[i, j] = b * (f_r * rs)
            kdr[i, j] = a * (f_n * rs)
            pn2 = a.real * a.real + a.imag * a.imag
            pr2 = b.real * b.real + b.imag * b.imag
            kn[i, j] = a.conjugate() * (f_n * f_r * f_r * pr2 / den)
            kr[i, j] = b.conjugate() * (f_r * f_n * f_n * pn2 / den)


@njit(inline="always")
def _finalize_px(i, j, d, vdd, sv, vt, valid, inv_fd, inv_fs, diff, diffvar, score, flux,
                 fluxvar):  # fmt: skip
    """One pixel of the public products at [i, j] of the output arrays (see zogy_finalize)."""
    ok = valid[i, j] and vt > 0.0 and vdd > 0.0 and math.isfinite(vt + vdd)
    if ok:
        diff[i, j] = d * inv_fd
        diffvar[i, j] = vdd * inv_fd * inv_fd
        score[i, j] = sv / math.sqrt(vt)
        flux[i, j] = sv * inv_fs
        fluxvar[i, j] = vt * inv_fs * inv_fs
    else:
        valid[i, j] = False
        diff[i, j] = 0.0
        diffvar[i, j] = math.nan
        score[i, j] = 0.0
        flux[i, j] = 0.0
        fluxvar[i, j] = math.nan


@njit(
    [
        f"void({r}, {r}, {r}, {r}, {r}, boolean[:, :], float64, float64, "
        "float32[:, :], float32[:, :], float32[:, :], float32[:, :], float32[:, :])"
        for r in _REAL
    ]
)
def zogy_finalize(d, vd, s, vs, vx, valid, f_d, f_s, diff, diffvar, score, flux, fluxvar):
    """Scale a tile's core into the public products; ``valid`` is read and updated.

    diff = d / F_D, diffvar = vd / F_D^2, score = s / sqrt(vs + vx), flux = s / F_S,
    fluxvar = (vs + vx) / F_S^2.  Pixels already invalid, or whose variances are not
    positive and finite (deep inside a masked area the convolved variance is ~0 or
    rounding noise), get values 0 and variances NaN, and are marked invalid.
    """
    ny, nx = s.shape
    inv_fd = 1.0 / f_d
    inv_fs = 1.0 / f_s
    for i in range(ny):
        for j in range(nx):
            _finalize_px(i, j, d[i, j], vd[i, j], s[i, j], vs[i, j] + vx[i, j], valid, inv_fd,
                         inv_fs, diff, diffvar, score, flux, fluxvar)  # fmt: skip


_FRAME = ("float32[:, ::1]", "float64[:, ::1]")


@njit(
    [
        f"void({r}, {r}, {r}, {r}, {r}, boolean, int64, int64, int64, float64, float64, "
        "float64, boolean[:, ::1], int64, int64, float64, float64, float32[:, ::1], "
        "float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1])"
        for r in _FRAME
    ]
)
def zogy_core(d, vd, vs, s_n, s_r, parts, b, h, w, sx2, sy2, e2, valid, y0, x0, f_d, f_s,
              diff, diffvar, score, flux, fluxvar):  # fmt: skip
    """A ZOGY tile's core from its frames: S, its extra variance, then the products.

    With ``parts``, S = s_n - s_r and the extra variance is

        sx2 (gx_n^2 + gx_r^2) + sy2 (gy_n^2 + gy_r^2) + e2 (s_n^2 + s_r^2)

    (central-difference gradients of S_n and S_r: ZOGY's astrometric variance, eq. 30-31,
    and the PSF-model-error term of diffstream.jitcore.zogy.zogy); without, ``s_n`` is S itself and
    the extra variance 0 (``s_r`` unread).  The products are :func:`zogy_finalize`'s with
    vx = that extra variance.  The frames (C arrays) hold the core at [b, b + h) x
    [b, b + w) (b >= 1: every core pixel has both neighbours); ``valid`` and the products
    are whole images with the core at (y0, x0).  One pass over C arrays: the separate
    gradient and finalize kernels over strided views, plus a full-frame S_n - S_r, took
    ~3x longer.
    """
    inv_fd = 1.0 / f_d
    inv_fs = 1.0 / f_s
    for i in range(h):
        fi = b + i
        for j in range(w):
            fj = b + j
            if parts:
                a = s_n[fi, fj]
                c = s_r[fi, fj]
                gxn = 0.5 * (s_n[fi, fj + 1] - s_n[fi, fj - 1])
                gxr = 0.5 * (s_r[fi, fj + 1] - s_r[fi, fj - 1])
                gyn = 0.5 * (s_n[fi + 1, fj] - s_n[fi - 1, fj])
                gyr = 0.5 * (s_r[fi + 1, fj] - s_r[fi - 1, fj])
                vx = sx2 * (gxn * gxn + gxr * gxr) + sy2 * (gyn * gyn + gyr * gyr)
                vx += e2 * (a * a + c * c)
                sv = a - c
            else:
                vx = 0.0
                sv = s_n[fi, fj]
            _finalize_px(y0 + i, x0 + j, d[fi, fj], vd[fi, fj], sv, vs[fi, fj] + vx, valid,
                         inv_fd, inv_fs, diff, diffvar, score, flux, fluxvar)  # fmt: skip


_BASIS = "float64[:, :, :, ::1]"


@njit(
    [
        f"float64({_BASIS}, float64[::1], {_BASIS}, float64[::1], float64, float64, float64, "
        f"float64, float64, int64, boolean, {', '.join([c] * 13)}, float64[:, ::1])"
        for c in _SPEC_C
    ],
    error_model="numpy",
)
def zogy_frame_spectra(bn, cn, br, cr, a_n, a_r, floor, f_n, f_r, nx_full, parts,
                       xn, xr, xvn, xvr, kn2, kr2, kdn2, kdr2, d, vd, vs, sn, sr,
                       scratch):  # fmt: skip
    """A tile's five output spectra and F_S in one pass over its frame's half plane.

    P_n^ = sum_k cn[k] bn[k] and P_r^ = sum_k cr[k] br[k] (the PSF spectra as a combination
    of basis spectra; one basis spectrum with coefficient 1 is the plain case), the basis
    spectra as (real, imag) x basis x frame planes (bn[0, k] = real part of the k-th: plain
    double rows, which the basis sums vectorise over; interleaved complex did not); from them,
    per frequency and in double precision, B (floored as :func:`zogy_denominator`) and the
    four kernels of :func:`zogy_spectral_kernels`, which are never stored:

        d  = kD_n xn - kD_r xr            vd = kdn2 xvn + kdr2 xvr      vs = kn2 xvn + kr2 xvr
        sn = k_n xn, sr = k_r xr  (parts)  or  sn = k_n xn - k_r xr (not parts; sr unwritten)

    (xn, xr: the data spectra; xvn, xvr: the variances'; kn2 ...: the kernel squares'.)
    Returns F_S (module docstring), the mean over the *full* plane: the half plane holds
    columns 0..nx_full//2, and every column except 0 (and the Nyquist column when nx_full
    is even) stands for itself and its Hermitian mirror, hence weight 2.  d, sn and sr are
    computed in double precision and rounded once to the output dtype; vd and vs in the
    spectra's precision.  The outputs
    must not overlap the inputs (row by row the loops read an input after an output is
    written).  ``scratch``: (9, nx//2+1) float64, overwritten.

    Why fused: the separate kernels (denominator, kernels, F_S, three combines, two
    products) made ten passes over frame-sized planes and stored four kernel planes that
    were read once.  Written for LLVM's vectoriser: the basis sums go row by row into
    ``scratch`` (a loop over k inside the pixel loop kept it scalar, 3x slower); F_S is
    summed per column and the columns at the end (a scalar running sum is a reduction that
    IEEE order forbids vectorising); ``error_model="numpy"`` drops the zero-division branch
    (B >= floor > 0).
    """
    ny, nxh = xn.shape
    nb = cn.shape[0]
    nr = cr.shape[0]
    c = f_n * f_n * f_r * f_r
    cnr = f_n * f_r * f_r
    crn = f_r * f_n * f_n
    pnr = scratch[0]
    pni = scratch[1]
    prr = scratch[2]
    pri = scratch[3]
    acc = scratch[4]
    gdn = scratch[5]
    gdr = scratch[6]
    gn = scratch[7]
    gr = scratch[8]
    for j in range(nxh):
        acc[j] = 0.0
    for i in range(ny):
        for j in range(nxh):
            pnr[j] = cn[0] * bn[0, 0, i, j]
            pni[j] = cn[0] * bn[1, 0, i, j]
            prr[j] = cr[0] * br[0, 0, i, j]
            pri[j] = cr[0] * br[1, 0, i, j]
        for k in range(1, nb):
            ck = cn[k]
            for j in range(nxh):
                pnr[j] += ck * bn[0, k, i, j]
                pni[j] += ck * bn[1, k, i, j]
        for k in range(1, nr):
            ck = cr[k]
            for j in range(nxh):
                prr[j] += ck * br[0, k, i, j]
                pri[j] += ck * br[1, k, i, j]
        # The real gains of the four kernels (kD_n = gdn P_r, kD_r = gdr P_n,
        # k_n = gn conj(P_n), k_r = gr conj(P_r)): sqrt and division in their own loop,
        # over plain double rows, where they vectorise.
        for j in range(nxh):
            pn2 = pnr[j] * pnr[j] + pni[j] * pni[j]
            pr2 = prr[j] * prr[j] + pri[j] * pri[j]
            den = a_n * pr2 + a_r * pn2
            den = den if den > floor else floor
            rs = 1.0 / math.sqrt(den)
            inv = rs * rs
            acc[j] += pn2 * pr2 * inv
            gdn[j] = f_r * rs
            gdr[j] = f_n * rs
            gn[j] = cnr * pr2 * inv
            gr[j] = crn * pn2 * inv
        # The products, split into loops of few arrays: with more, LLVM would need more
        # runtime overlap checks than it allows and leave the loop scalar (one fused loop
        # over all 13 planes ran at ~9 ns a frequency).
        for j in range(nxh):
            x = xn[i, j]
            y = xr[i, j]
            xr_, xi = float(x.real), float(x.imag)
            yr, yi = float(y.real), float(y.imag)
            d[i, j] = complex(
                gdn[j] * (prr[j] * xr_ - pri[j] * xi) - gdr[j] * (pnr[j] * yr - pni[j] * yi),
                gdn[j] * (prr[j] * xi + pri[j] * xr_) - gdr[j] * (pnr[j] * yi + pni[j] * yr),
            )
        if parts:
            for j in range(nxh):
                x = xn[i, j]
                y = xr[i, j]
                xr_, xi = float(x.real), float(x.imag)
                yr, yi = float(y.real), float(y.imag)
                # k_n x = gn conj(P_n) x, k_r y = gr conj(P_r) y
                sn[i, j] = complex(gn[j] * (pnr[j] * xr_ + pni[j] * xi),
                                   gn[j] * (pnr[j] * xi - pni[j] * xr_))  # fmt: skip
                sr[i, j] = complex(gr[j] * (prr[j] * yr + pri[j] * yi),
                                   gr[j] * (prr[j] * yi - pri[j] * yr))  # fmt: skip
        else:
            for j in range(nxh):
                x = xn[i, j]
                y = xr[i, j]
                xr_, xi = float(x.real), float(x.imag)
                yr, yi = float(y.real), float(y.imag)
                sn[i, j] = complex(
                    gn[j] * (pnr[j] * xr_ + pni[j] * xi) - gr[j] * (prr[j] * yr + pri[j] * yi),
                    gn[j] * (pnr[j] * xi - pni[j] * xr_) - gr[j] * (prr[j] * yi - pri[j] * yr),
                )
        # The variance spectra in the spectra's own precision (the kernel squares are
        # stored in it).
        for j in range(nxh):
            vd[i, j] = kdn2[i, j] * xvn[i, j] + kdr2[i, j] * xvr[i, j]
        for j in range(nxh):
            vs[i, j] = kn2[i, j] * xvn[i, j] + kr2[i, j] * xvr[i, j]
    total = 0.0
    for j in range(nxh):
        w = 1.0 if (j == 0 or (nx_full % 2 == 0 and j == nxh - 1)) else 2.0
        total += w * acc[j]
    return c * total / (ny * nx_full)

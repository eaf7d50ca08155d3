"""The empty-sky pixels of a score, for jitcore.noisecorr.empty_sky_scale.  No checks here.

:func:`empty_sky_free` is the fused form of the NumPy chain it replaced (ok = valid & finite,
hot = ok & |s| >= cut, hot grown in blocks, free = ok & ~grown: ~35 ms of full-frame passes
and a padded copy at 4k): one pass marks the usable pixels and the blocks holding a hot one,
the block map (a few hundred thousand entries) is dilated by one block, and a second pass
writes ``free``.  tests/unit/test_noisecorr.py compares it with that chain.
"""

from __future__ import annotations

import numpy as np

from diffstream.jitcore._jit import njit

__all__ = ["empty_sky_free"]


@njit
def empty_sky_free(s, valid, cut, block, hot_blocks, grown, free):
    """free = valid & finite(s) & not within the hot blocks grown by one block; returns
    (number of usable pixels, number of free pixels).

    A pixel is hot when usable and |s| >= ``cut``; a ``block`` x ``block`` block (counted
    from the origin) is hot when it holds a hot pixel, and every block 8-adjacent to a hot
    block is masked too (scipy's binary_dilation with a 3 x 3 square, blocks outside the
    frame not hot).  ``hot_blocks`` and ``grown``: bool scratch of ceil(ny / block) x
    ceil(nx / block); ``free``: bool, s's shape (C-contiguous).  s, valid: any strides.
    """
    ny, nx = s.shape
    nby, nbx = hot_blocks.shape
    hot_blocks[:, :] = False
    n_ok = 0
    any_hot = False
    inf = np.inf
    for y in range(ny):
        by = y // block
        for x in range(nx):
            v = s[y, x]
            a = abs(v)
            ok = valid[y, x] & (a < inf)  # branch-free; False for NaN and inf
            free[y, x] = ok
            n_ok += ok
            if ok & (a >= cut):  # rare: a predictable branch
                hot_blocks[by, x // block] = True
                any_hot = True
    if not any_hot:
        return n_ok, n_ok
    grown[:, :] = False
    for by in range(nby):
        for bx in range(nbx):
            if hot_blocks[by, bx]:
                for dy in range(max(0, by - 1), min(nby, by + 2)):
                    for dx in range(max(0, bx - 1), min(nbx, bx + 2)):
                        grown[dy, dx] = True
    n_free = 0
    for y in range(ny):
        row = grown[y // block]
        for x in range(nx):
            f = free[y, x] and not row[x // block]
            free[y, x] = f
            n_free += f
    return n_ok, n_free

"""The streak step: satellite streaks on the difference become the STREAK mask plane.

diffstream.jitcore.streaks.find_streaks_above runs a Hough search on the detection mask (the
pixels of |score| > the detection threshold, both signs, where the score is valid: the
detection footprints' own pixels, jitcore.labels.threshold_pixels); each
streak found is painted into a copy of the combined mask as the STREAK plane (added at the
lowest free bit when the exposure's planes do not name it, as LSST's MaskStreaksTask adds
it).  Measurement then sets ``pixelFlags_streak`` / ``pixelFlags_streakCenter`` from it like
every other plane (diffstream.jitcore.measure.PIXEL_FLAG_PLANES).

Setting: ``streak_min_length`` (px; 0 turns the step off): much longer than a PSF or a fast
mover's trail (5-40 px in the trail science test), so a trailed asteroid is measured as a
trail, not masked as a streak.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from diffstream.jitcore.masks import bits, with_planes
from diffstream.jitcore.streaks import STREAK_DTYPE, find_streaks_above, streak_mask

__all__ = ["STREAK_PLANE", "mark_streaks", "streak_summary"]

STREAK_PLANE = "STREAK"


def mark_streaks(
    score: np.ndarray,
    valid: np.ndarray,
    mask: np.ndarray,
    planes: Mapping[str, int],
    *,
    threshold: float,
    min_length: float,
) -> tuple[np.ndarray, dict[str, int], np.ndarray]:
    """(mask with the STREAK plane set on streaks, its planes, the streaks found).

    ``mask`` is not modified (the science exposure's own mask may be it); the returned one is
    a copy whenever a streak was found.  ``min_length`` <= 0: no search."""
    new_planes = with_planes(dict(planes), (STREAK_PLANE,))
    if min_length <= 0:
        return mask, new_planes, np.zeros(0, dtype=STREAK_DTYPE)
    # The detection footprints' pixels (|score| > threshold in float32, valid, finite), listed
    # by one scan of the score: no full-frame boolean image (issue 17: its five passes were
    # most of this step; earlier, |score| as a float temporary set the pipeline's peak RSS).
    found = find_streaks_above(score, valid, threshold, min_length=float(min_length))
    if len(found) == 0:
        return mask, new_planes, found
    painted = streak_mask(mask.shape, found)
    out = mask.copy()
    out[painted] |= np.asarray(bits(new_planes, (STREAK_PLANE,)), dtype=out.dtype)
    return out, new_planes, found


def streak_summary(found: np.ndarray) -> list[dict[str, Any]]:
    """The streaks as plain numbers for the task metadata."""
    return [{k: float(row[k]) for k in ("x0", "y0", "x1", "y1", "width")} for row in found]

"""How much of the science image the warped template covers.

The pipeline compares this with ``required_template_fraction`` and raises NoWorkFound below
it (LSST's ImageDifferenceTask rule: good template pixels are those without NO_DATA).
"""

from __future__ import annotations

import numpy as np

from diffstream.jitcore._kernels.bitplanes import coverage_counts

__all__ = ["template_coverage"]


def _mask_array(name: str, mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    return arr


def _bit_value(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int bit value, got {type(value).__name__}")
    value = int(value)
    if value <= 0 or value & (value - 1) or value > 1 << 30:
        raise ValueError(f"{name} must be a single bit value 1 << k with 0 <= k <= 30, got {value}")
    return value


def template_coverage(
    warped_mask: np.ndarray,
    *,
    no_data_bit: int,
    science_mask: np.ndarray | None = None,
    science_no_data_bit: int | None = None,
) -> float:
    """Fraction in [0, 1] of science pixels whose warped template pixel is not NO_DATA.

    ``warped_mask`` is the template mask on the science grid (diffstream.jitcore.warp.warp_image);
    ``no_data_bit`` its NO_DATA bit *value* (``1 << plane``).  With ``science_mask`` (and
    its own ``science_no_data_bit``, required then, since the two exposures may order their
    planes differently) only science pixels that have data are counted.  Returns 0.0 when
    no science pixel has data.
    """
    tmask = _mask_array("warped_mask", warped_mask)
    tbit = _bit_value("no_data_bit", no_data_bit)
    if science_mask is None:
        if science_no_data_bit is not None:
            raise ValueError("science_no_data_bit given without science_mask")
        return float(np.count_nonzero((tmask & tbit) == 0) / tmask.size)
    if science_no_data_bit is None:
        raise ValueError("science_mask given without science_no_data_bit")
    smask = _mask_array("science_mask", science_mask)
    sbit = _bit_value("science_no_data_bit", science_no_data_bit)
    if smask.shape != tmask.shape:
        raise ValueError(f"science_mask shape {smask.shape} != warped_mask shape {tmask.shape}")
    if smask.dtype == tmask.dtype == np.int32:
        # One pass over both masks (the NumPy form: six, with 64 MB temporaries at 4k).
        n_good, covered = coverage_counts(np.ascontiguousarray(tmask).reshape(-1), np.int32(tbit),
                                          np.ascontiguousarray(smask).reshape(-1),
                                          np.int32(sbit))  # fmt: skip
    else:
        science_good = (smask & sbit) == 0
        n_good = int(np.count_nonzero(science_good))
        covered = int(np.count_nonzero(science_good & ((tmask & tbit) == 0)))
    if n_good == 0:
        return 0.0
    return int(covered) / int(n_good)

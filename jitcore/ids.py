"""Unique, reproducible 64-bit diaSource ids (LSST afw ``IdFactory.makeSource`` layout).

LSST composes a source id as ``(exposure_id << reserved) | counter``: the exposure id in the
upper bits, a per-exposure counter starting at 1 in the lower ``reserved`` bits (afw
src/table/IdFactory.cc; 0 is never issued because afw uses it for "null").  The old
ImageDifferenceTask.makeIdFactory passed ``reserved = 64 - expBits``, which lets an exposure
id that uses all its bits set the sign bit; afw later added
``IdFactory.computeReservedFromMaxBits(maxBits) = 64 - 1 - maxBits`` ("subtract one for
signed integers to avoid the sign bit").  We follow the latter: alert ids are Avro ``long``
(signed 64-bit), so we use 63 bits and every id is > 0::

    bit 63      : 0 (sign)
    bits 62..C  : exposure_id          (exposure_bits bits)
    bits C-1..0 : counter, 1-based     (C = 63 - exposure_bits bits)

Stability: the n-th source of an exposure always gets ``(exposure_id << C) | n`` for a fresh
factory, so a rerun that numbers the same sources in the same order (diffstream.jitcore.detect sorts
them by peak position) reproduces the ids.
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["ID_BITS", "IdFactory", "decode"]

ID_BITS = 63  # usable bits of a signed 64-bit integer


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError as exc:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from exc


def _check_bits(exposure_bits) -> int:
    bits = _as_int("exposure_bits", exposure_bits)
    if not 1 <= bits <= ID_BITS - 1:
        msg = f"exposure_bits must be in 1..{ID_BITS - 1} (one counter bit at least), got {bits}"
        raise ValueError(msg)
    return bits


def decode(source_id, exposure_bits) -> tuple[int, int]:
    """Split an id into (exposure_id, counter) for ids made with ``exposure_bits``."""
    bits = _check_bits(exposure_bits)
    value = _as_int("source_id", source_id)
    if not 0 < value < 1 << ID_BITS:
        raise ValueError(f"source_id must be in 1..2**63-1, got {value}")
    counter_bits = ID_BITS - bits
    return value >> counter_bits, value & ((1 << counter_bits) - 1)


class IdFactory:
    """Issue ids ``(exposure_id << (63 - exposure_bits)) | counter``, counter = 1, 2, ...

    Raises ValueError when ``exposure_id`` does not fit in ``exposure_bits`` and
    OverflowError when the counter would exceed its ``63 - exposure_bits`` bits (nothing is
    issued by the failing call).
    """

    def __init__(self, exposure_id: int, exposure_bits: int) -> None:
        self.exposure_bits = _check_bits(exposure_bits)
        self.exposure_id = _as_int("exposure_id", exposure_id)
        if not 0 <= self.exposure_id < 1 << self.exposure_bits:
            raise ValueError(
                f"exposure_id {self.exposure_id} does not fit in exposure_bits="
                f"{self.exposure_bits} (allowed 0..{(1 << self.exposure_bits) - 1})"
            )
        self.counter_bits = ID_BITS - self.exposure_bits
        self.max_counter = (1 << self.counter_bits) - 1
        self._upper = self.exposure_id << self.counter_bits
        self._last = 0  # last counter issued

    @property
    def issued(self) -> int:
        """How many ids this factory has issued."""
        return self._last

    def _reserve(self, n: int) -> int:
        if self._last + n > self.max_counter:
            raise OverflowError(
                f"{n} more ids after {self._last} exceed the {self.counter_bits}-bit counter "
                f"(max {self.max_counter}) of exposure_id {self.exposure_id} with "
                f"exposure_bits={self.exposure_bits}"
            )
        first = self._last + 1
        self._last += n
        return first

    def __call__(self) -> int:
        """The next id."""
        return self._upper | self._reserve(1)

    def make_ids(self, n) -> np.ndarray:
        """The next ``n`` ids as an int64 array (n may be 0)."""
        count = _as_int("n", n)
        if count < 0:
            raise ValueError(f"n must be >= 0, got {count}")
        first = self._reserve(count)
        counters = np.arange(first, first + count, dtype=np.int64)
        return np.bitwise_or(counters, np.int64(self._upper))

    def decode(self, source_id) -> tuple[int, int]:
        """(exposure_id, counter) of an id made with this factory's exposure_bits."""
        return decode(source_id, self.exposure_bits)

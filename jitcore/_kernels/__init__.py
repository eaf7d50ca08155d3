"""Allocation-free Numba loops. No checks here: the public functions in jitcore check."""

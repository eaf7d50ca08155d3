"""``pipeline``: the subtraction. Each step (warp, astrometry, PSF, subtraction,
detection, measurement, dipoles) is a function; ``subtract`` orchestrates them, ``detect_only``
reuses the tail on a difference that arrives already made, and ``products`` writes a run's output
directory.

May import ``io``, ``alerts``, ``provenance``, ``ops`` and ``diffstream.jitcore``; never
``transport``, ``cli`` or ``sim``.
"""

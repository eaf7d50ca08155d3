"""``io``: exposures in and files out. FITS reading (LSST MEF and plain files, survey
adapters), header calibration to nJy, external PSFs and backgrounds, the in-memory ``Exposure``,
data-root path checks, the FITS/JSON product writers and the debug plots.

May import ``ops``, ``diffstream.jitcore`` and ``diffstream.schemas``; never ``pipeline``,
``transport`` or ``cli``.
"""

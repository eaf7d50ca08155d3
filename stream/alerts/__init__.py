"""``alerts``: LSST alert packets. diaSource records from measured rows (ids, sky
coordinates, units), alert records and their Avro files and serializers, and the FITS cutouts.

May import ``io``, ``ops``, ``diffstream.jitcore`` and ``diffstream.schemas``; never ``pipeline``,
``transport`` or ``cli``.
"""

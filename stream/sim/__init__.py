"""``sim``: the seeded simulator of science/template pairs with known difference sources, and
its FITS/CSV writers. Used by the demo, the warm-up and the tests; the pipeline never imports it.

May import ``ops`` and ``diffstream.jitcore``; nothing else of ``diffstream.stream``.
"""

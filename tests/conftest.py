"""Suite-wide settings: the Hypothesis profiles.

``make test`` (and so CI) runs the ``ci`` profile: derandomized, so the property tests draw
the same examples on every run and a green suite stays green; the example database is off, as
a fresh clone has none.  A plain ``pytest`` uses ``dev``: fresh random examples each run, with
failures remembered in ``.hypothesis/``, which is how new counter-examples are found (the
float32 cancellation in test_alardlupton's normal equations was one).  Each test keeps its own
small ``max_examples`` budget (STYLE.md).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

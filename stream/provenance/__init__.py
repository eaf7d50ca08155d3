"""``provenance``: what a run records about itself. Task metadata (step names, timers),
package versions, and the output store's config/versions/schemas record.

May import ``io`` (its writers), ``ops`` and ``diffstream.schemas``.
"""

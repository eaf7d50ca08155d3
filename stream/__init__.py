"""``diffstream.stream``: everything of diffstream that touches the world, in rooms by concern.

The layering is one way: ``cli`` -> ``transport`` -> ``pipeline`` -> ``io`` / ``alerts`` ->
``diffstream.jitcore``, with ``ops`` (settings, errors, logs, metrics, CPUs, memory) at the side,
usable from every room, and ``provenance`` (task metadata, versions, the output store's record)
usable from ``pipeline`` and above. ``sim`` (the simulator) serves the demo, the warm-up and the
tests; the pipeline never imports it. ``docs/architecture.md`` has the picture and the table.
"""

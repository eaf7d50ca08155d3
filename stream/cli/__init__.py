"""``cli``: the ``diffstream`` command line (``main``) and its command groups: science
(``subtract``, ``detect``), streaming (``run``, ``publish-event``), tools (``tail``, ``replay``,
``check``), the demo and the warm-up.

The top of the layering: may import every room.
"""

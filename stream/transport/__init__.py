"""``transport``: how events arrive and results leave. The transport-independent worker
(``service``), Kafka (``kafka``) and the directory transport (``directory``), exposure-ready events,
the worker's own records (summaries, dead letters), message framing and the schema registry, Kafka
headers, replay, ``tail`` and ``check``.

May import ``pipeline`` and everything below it; never ``cli``.
"""

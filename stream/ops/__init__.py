"""``ops``: what every room may use: the one settings object, the typed error tree, logs,
Prometheus metrics, the CPU count the process may really use, and the malloc policy.

Modules here import only the standard library, third-party packages and each other; never another
room of ``diffstream.stream``.
"""

"""diffstream: real-time difference imaging (ZOGY) and LSST alerts, offline and on Kafka.

The distribution installs one import package, ``diffstream``, with three subpackages that live
in the repository's top-level folders (pyproject.toml maps them):

- ``diffstream.stream``  (``stream/``): everything that touches the world, in rooms by concern;
- ``diffstream.jitcore`` (``jitcore/``): the Numba numerics, no I/O;
- ``diffstream.schemas`` (``schemas/``): the Avro schemas, loaded by name at run time.

``docs/architecture.md`` draws the rooms and the one-way layering between them.
"""

# The one source of the version: pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.1.0"

"""The Alert Production Database (APDB): diaObjects, their diaSources and forced photometry.

What lives here: the tables (``schema``: DiaObject, DiaSource, DiaForcedSource with the LSST
alert schema's column names, plus a sky index), the store (``store``: SQLite or PostgreSQL
through SQLAlchemy Core, versioned, locked), association (``association``: nearest diaObject
within a radius) and the per-exposure step that ties them to the pipeline (``step``).
May import: diffstream.stream.alerts, diffstream.stream.io, diffstream.stream.ops,
diffstream.jitcore; SQLAlchemy, psycopg and astropy-healpix only inside functions, so that
start-up without an APDB stays fast.
"""

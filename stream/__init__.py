"""diffstream: real-time difference imaging (ZOGY) and LSST alerts, offline and on Kafka."""

__version__ = "0.1.0"

"""Structured logs: plain text or JSON lines, with ``topic[partition]@offset`` on event lines.

Event lines name their message: ``exposures[2]@1041: dead-lettered (...)``.  Code that logs
about one message either starts the text with :func:`where` (the worker's convention) or
uses :func:`event_logger`, which adds the prefix and the structured fields.  In JSON mode
(``--log-json``) each record is one line::

    {"ts": "2026-11-25T09:10:31.123Z", "level": "WARNING", "logger": "diffstream.service",
     "msg": "exposures[2]@1041: dead-lettered ...", "topic": "exposures", "partition": 2,
     "offset": 1041}

``topic``/``partition``/``offset`` come from the logger's ``extra`` or, failing that, from a
``topic[partition]@offset`` at the start of the message, so lines from modules that only
format the prefix get the fields too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

__all__ = [
    "where",
    "JsonFormatter",
    "TEXT_FORMAT",
    "setup_logging",
    "event_logger",
    "RepeatFilter",
]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_WHERE = re.compile(r"^(?P<topic>[^\s\[\]]+)\[(?P<partition>-?\d+)\]@(?P<offset>-?\d+)(?::|\s|$)")
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def where(topic: str, partition: int, offset: int) -> str:
    """``topic[partition]@offset``: how every log line names a message."""
    return f"{topic}[{partition}]@{offset}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, msg, event fields, extras."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if "topic" not in out:
            m = _WHERE.match(message)
            if m:
                out["topic"] = m["topic"]
                out["partition"] = int(m["partition"])
                out["offset"] = int(m["offset"])
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (pytest's capture, a redirect),
    not to the stream that was current when logging was set up."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup_logging(
    *, json_lines: bool = False, verbose: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """(Re)configure the root logger: one stderr handler, text or JSON lines; returns it."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call and basicConfig's plain one (main() installs it first);
        # handlers others attached (pytest's caplog, an embedding application's) stay.
        if getattr(old, "_diffstream", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    setattr(handler, "_diffstream", True)  # noqa: B010 - a marker, not an attribute of the type
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # librdkafka's and httpx's chatter at INFO would drown the event lines.
    for noisy in ("httpx", "httpcore", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


class _EventAdapter(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return f"{extra['where']}: {msg}", kwargs


def event_logger(
    logger: logging.Logger, topic: str, partition: int, offset: int, **fields: Any
) -> logging.LoggerAdapter:
    """A logger for one message: text lines start with ``topic[partition]@offset:``, JSON lines
    carry ``topic``, ``partition``, ``offset``, ``where`` and ``fields``."""
    extra = {
        "topic": topic,
        "partition": int(partition),
        "offset": int(offset),
        "where": where(topic, partition, offset),
        **fields,
    }
    return _EventAdapter(logger, extra)


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) + "Z"


class RepeatFilter(logging.Filter):
    """Let the first of a run of similar lines through, count the rest for ``window_s``.

    librdkafka reports a broker outage once per connection attempt and per client thread:
    ~80 lines for 13 s down (issue 16).  Lines that differ only in their numbers (ports,
    "after 3ms", "30 identical error(s)") count as one; the next line let through says how
    many were suppressed and since when, and :meth:`flush` reports a run that simply ended
    (the broker came back), so the count is never lost.  The times are when Python saw the
    lines: librdkafka queues its logs and errors until the next ``poll``.
    """

    def __init__(self, *, window_s: float = 30.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._lock = threading.Lock()
        # key -> [first time of the run, last time, suppressed count, logger, level, text]
        self._runs: dict[str, list[Any]] = {}

    @staticmethod
    def _key(record: logging.LogRecord) -> str:
        return f"{record.name}|{record.levelno}|" + re.sub(r"\d+", "#", record.getMessage())

    def filter(self, record: logging.LogRecord) -> bool:
        key = self._key(record)
        now = record.created
        with self._lock:
            run = self._runs.get(key)
            if run is not None and now - run[0] < self.window_s:
                run[1] = now
                run[2] += 1
                return False
            self._runs[key] = [now, now, 0, record.name, record.levelno, record.getMessage()]
        if run is not None and run[2]:
            record.msg = (
                f"{record.getMessage()} ({run[2]} similar lines suppressed "
                f"{_clock(run[0])}..{_clock(run[1])})"
            )
            record.args = None
        return True

    def flush(self, *, older_than_s: float | None = None) -> None:
        """Report every run whose window is over (all runs with ``older_than_s=0``)."""
        age = self.window_s if older_than_s is None else older_than_s
        now = time.time()
        done = []
        with self._lock:
            for key, run in list(self._runs.items()):
                if now - run[0] >= age:
                    del self._runs[key]
                    if run[2]:
                        done.append(run)
        for first, last, count, name, level, text in done:
            logging.getLogger(name).log(
                level,
                "%s (%d similar lines suppressed %s..%s; none since)",
                text,
                count,
                _clock(first),
                _clock(last),
            )

"""Directory transport: the embedded default of ``diffstream run`` (no Kafka).

Input: Avro container files ``INPUT/*.avro`` of exposure events (any number per file; files
whose names start with ``.`` are ignored, so writers create ``.name.tmp`` and rename).  Each
record is turned back into single-object bytes under the file's own writer schema, so the
worker decodes it exactly as it decodes a Kafka message, and an event written with a schema
we do not know is dead-lettered as ``unknown_schema``.

Output, one file per event (named after the input file and record index, so reprocessing
after a crash overwrites instead of duplicating)::

    OUTPUT/alerts/<file>-<index>.avro        alerts (our alert schema), when there are any
    OUTPUT/summaries/<file>-<index>.avro     the summary record
    OUTPUT/deadletters/<file>-<index>.avro   the dead-letter record, for bad input
    OUTPUT/offsets.json                      per input file: records done (the "commit")

Every file is written to a temporary name and renamed, and ``offsets.json`` only after the
event's outputs exist: the same at-least-once order as the Kafka transport.  A file that is
not Avro, or breaks off in the middle, yields one dead letter holding the whole file's bytes
(offset = index of the first record that could not be read).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import fastavro

from diffstream.schemas import fingerprint
from diffstream.stream.alerts.packets import write_alert_file
from diffstream.stream.transport.events import encode_single_object
from diffstream.stream.transport.outcomes import Metrics, NullMetrics, Outcome, SourceMessage
from diffstream.stream.transport.records import DEADLETTER_SCHEMA, SUMMARY_SCHEMA, write_record_file

__all__ = ["DirTransport", "write_event_file", "OFFSETS_FILE"]

log = logging.getLogger("diffstream.dir")

OFFSETS_FILE = "offsets.json"
# A dead letter keeps the original bytes; a huge non-Avro file keeps only its first part.
_MAX_ORIGINAL = 16 * 2**20


def write_event_file(path: str | os.PathLike[str], events: list[dict[str, Any]]) -> Path:
    """Write events (from :func:`stream.transport.events.make_event`) as an Avro container file."""
    from diffstream.stream.transport.events import EVENT_SCHEMA, validate_event

    return write_record_file(path, EVENT_SCHEMA, [validate_event(e) for e in events])


class DirTransport:
    """Events from ``input_dir``, outcomes to ``output_dir``; see the module doc."""

    def __init__(
        self,
        input_dir: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        if not self.input_dir.is_dir():
            from diffstream.stream.ops.errors import ConfigError

            raise ConfigError(f"input directory {self.input_dir} does not exist")
        for sub in ("alerts", "summaries", "deadletters"):
            (self.output_dir / sub).mkdir(parents=True, exist_ok=True)
        self.metrics: Metrics = metrics or NullMetrics()
        self._offsets: dict[str, int] = self._load_offsets()
        self._queue: deque[SourceMessage] = deque()
        self._queued_files: set[str] = set()

    # -- offsets ----------------------------------------------------------------------------
    def _offsets_path(self) -> Path:
        return self.output_dir / OFFSETS_FILE

    def _load_offsets(self) -> dict[str, int]:
        path = self._offsets_path()
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            from diffstream.stream.ops.errors import ConfigError

            raise ConfigError(f"{path} is not readable JSON: {exc}") from exc
        return {str(k): int(v) for k, v in data.items()}

    def _save_offsets(self) -> None:
        path = self._offsets_path()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self._offsets, indent=1, sort_keys=True))
        os.replace(tmp, path)

    # -- reading ----------------------------------------------------------------------------
    def _read_file(self, path: Path) -> list[SourceMessage]:
        """Messages of one file from its committed offset on (see the module doc)."""
        start = self._offsets.get(path.name, 0)
        out: list[SourceMessage] = []
        n_read = 0
        try:
            with path.open("rb") as fh:
                reader = fastavro.reader(fh)
                writer: Any = reader.writer_schema
                fp = fingerprint(writer)
                for record in reader:
                    if n_read >= start:
                        value = encode_single_object(writer, fp, record)
                        out.append(SourceMessage(value, str(path), 0, n_read))
                    n_read += 1
        except Exception as exc:  # noqa: BLE001 - anything unreadable becomes a dead letter
            if n_read < start:
                return out  # dead-lettered (and committed) by an earlier run
            log.warning("%s: unreadable from record %d: %s", path, n_read, exc)
            try:
                raw = path.read_bytes()[:_MAX_ORIGINAL]
            except OSError:
                raw = b""
            out.append(SourceMessage(raw, str(path), 0, n_read))
        return out

    def _scan(self) -> None:
        for path in sorted(self.input_dir.glob("*.avro")):
            if path.name.startswith(".") or str(path) in self._queued_files:
                continue
            messages = self._read_file(path)
            self._queued_files.add(str(path))
            self._queue.extend(messages)

    def poll(self, timeout: float) -> SourceMessage | None:
        if not self._queue:
            self._scan()
        if not self._queue:
            time.sleep(timeout)
            self._scan()
        if not self._queue:
            return None
        self.metrics.on_lag(0, len(self._queue) - 1)
        return self._queue.popleft()

    # -- delivering -------------------------------------------------------------------------
    def deliver(self, outcome: Outcome) -> bool:
        msg = outcome.source
        stem = f"{Path(msg.topic).stem}-{msg.offset:06d}"
        if outcome.alerts:
            write_alert_file(self.output_dir / "alerts" / f"{stem}.avro", outcome.alerts)
        write_record_file(
            self.output_dir / "summaries" / f"{stem}.avro", SUMMARY_SCHEMA, [outcome.summary_record]
        )
        if outcome.dead_letter_record is not None:
            write_record_file(
                self.output_dir / "deadletters" / f"{stem}.avro",
                DEADLETTER_SCHEMA,
                [outcome.dead_letter_record],
            )
        name = Path(msg.topic).name
        self._offsets[name] = max(self._offsets.get(name, 0), msg.offset + 1)
        self._save_offsets()
        return True

    def close(self) -> None:
        self._queue.clear()

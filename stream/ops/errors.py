"""One typed error tree for diffstream.

Every error carries a *stage* (where in the event's life it happened: consume, process,
produce) and a *kind* (what went wrong: bad event, bad exposure, no work, kernel failure).
Both, with the message and any structured fields, go straight into a dead-letter record
(:meth:`DiffstreamError.to_record`) or, for :class:`NoWorkFound`, into the per-exposure
summary.  NoWorkFound is deliberately *not* a failure: a template that does not cover the
science image is a normal outcome of a survey, not a bug.

Messages state the rule and the value given, e.g.
``template covers 4.2% < required 10%``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "STAGES",
    "KINDS",
    "EXIT_OK",
    "EXIT_BAD_INPUT",
    "EXIT_NO_WORK",
    "DiffstreamError",
    "BadEvent",
    "BadExposure",
    "PathNotAllowed",
    "NotCalibrated",
    "NoWorkFound",
    "KernelFailure",
    "ConfigError",
    "ApdbError",
    "ApdbUnavailable",
    "ProduceError",
]

STAGES = ("consume", "process", "produce")
KINDS = (
    "bad_event", "bad_exposure", "no_work", "kernel_failure", "config", "apdb", "produce",
)  # fmt: skip

# CLI exit codes (issue 3): 0 done, 2 bad input, 3 no work.
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_NO_WORK = 3


class DiffstreamError(Exception):
    """Base of every error diffstream raises on purpose."""

    stage: str = "process"
    kind: str = "kernel_failure"
    exit_code: int = 1
    # A dependency that is down (a database that does not answer), not bad input: the stream
    # worker retries the event with back-off and never dead-letters it for this
    # (stream/transport/service.py, run_loop).
    retriable: bool = False

    def __init__(self, message: str, *, stage: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        if stage is not None:
            if stage not in STAGES:
                raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
            self.stage = stage
        self.fields: dict[str, Any] = fields

    def to_record(self) -> dict[str, Any]:
        """Structured form for dead-letter records and metadata (JSON/Avro friendly)."""
        return {
            "stage": self.stage,
            "kind": self.kind,
            "error": type(self).__name__,
            "message": self.message,
            "fields": {k: _plain(v) for k, v in self.fields.items()},
        }


class BadEvent(DiffstreamError):
    """An event that cannot be decoded or names nothing usable."""

    stage = "consume"
    kind = "bad_event"
    exit_code = EXIT_BAD_INPUT


class BadExposure(DiffstreamError):
    """A FITS file that is missing, corrupt, or not a usable exposure.

    ``path`` names the file, ``reason`` says why; both are required so that the operator
    reading a dead letter never has to guess which input was at fault.
    """

    kind = "bad_exposure"
    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: str | None = None, **fields: Any) -> None:
        if path is not None and str(path) not in message:
            message = f"{path}: {message}"
        super().__init__(message, path=str(path) if path is not None else None, **fields)
        self.path = path


class PathNotAllowed(BadExposure):
    """A path outside every configured data root (never opened)."""

    kind = "bad_event"


class NotCalibrated(BadExposure):
    """No photometric calibration keyword found and --allow-uncalibrated not given."""


class NoWorkFound(DiffstreamError):
    """Nothing to do for this exposure (e.g. the template covers too little of it)."""

    kind = "no_work"
    exit_code = EXIT_NO_WORK


class KernelFailure(DiffstreamError):
    """A numerical step failed on input that passed validation (a bug or a degenerate case)."""

    kind = "kernel_failure"
    exit_code = 1


class ConfigError(DiffstreamError):
    """Invalid settings or a refused clobber of stored config/versions."""

    stage = "process"
    kind = "config"
    exit_code = EXIT_BAD_INPUT


class ApdbError(DiffstreamError):
    """The APDB (stream/pipeline/apdb/) cannot be opened, is of another schema version, or a
    write failed.  Nothing of the exposure was committed (one transaction per exposure)."""

    stage = "process"
    kind = "apdb"
    exit_code = 1


class ApdbUnavailable(ApdbError):
    """The APDB server cannot be reached (connection refused or lost, server shutting down).
    Nothing of the exposure was committed; the same event succeeds once the server is back,
    so the worker retries it instead of dead-lettering it (``retriable``)."""

    retriable = True


class ProduceError(DiffstreamError):
    """An alert or record could not be delivered to the broker."""

    stage = "produce"
    kind = "produce"


def _plain(value: Any) -> Any:
    """Make a field JSON/Avro friendly (numpy scalars, paths) without importing numpy."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)

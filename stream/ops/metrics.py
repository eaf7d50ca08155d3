"""Prometheus metrics for the worker (``--metrics-port``), via prometheus-client.

:class:`PrometheusMetrics` implements the worker's :class:`stream.transport.outcomes.Metrics` hook;
:func:`start_metrics` also serves it over HTTP (``GET /metrics``, the Prometheus text format).

=====================================================  =========  ============================
metric                                                 type       labels
=====================================================  =========  ============================
``diffstream_events_consumed_total``                   counter
``diffstream_events_processed_total``                  counter    (pipeline ran: done/no work)
``diffstream_events_dead_lettered_total``              counter    ``kind``
``diffstream_events_no_work_total``                    counter
``diffstream_alerts_published_total``                  counter
``diffstream_step_duration_seconds``                   histogram  ``step``
``diffstream_event_to_alert_seconds``                  histogram  (producedAt -> committed)
``diffstream_consumer_lag``                            gauge      ``partition``
``diffstream_last_event_timestamp_seconds``            gauge
``diffstream_build_info``                              gauge      ``version``
``diffstream_warmup_seconds``                          gauge      ``ok`` (start-up warm-up)
``diffstream_worker_state``                            gauge      ``state`` (1 for the current)
``diffstream_group_lag``                               gauge      (whole input topic, -1 unknown)
=====================================================  =========  ============================

``GET /healthz`` (beside ``/metrics``) answers 200 ``ok`` or 503 with the reason: a fatal
client error (the worker is stopping), or no partition held for longer than
``unhealthy_after_s`` while the group has unprocessed events (issue 16: a worker stuck out of
its group looked healthy).  A worker that holds no partition because the group has more
members than the topic has partitions stays healthy while the lag is 0.

Each instance owns its own ``CollectorRegistry`` (never the process-global one), so tests and
a replay next to a worker in one process do not collide on metric names.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from diffstream import __version__

__all__ = [
    "PrometheusMetrics",
    "start_metrics",
    "STEP_BUCKETS",
    "LATENCY_BUCKETS",
    "WORKER_STATES",
]

log = logging.getLogger("diffstream.metrics")

# Steps run from a millisecond (encoding) to minutes (a 4k x 4k ZOGY on 2 cores).
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Event-to-alert latency includes queueing behind other events.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
WORKER_STATES = ("assigned", "waiting", "fatal")


class PrometheusMetrics:
    """The worker's metrics hook, recording into :attr:`registry`.

    Every hook method returns quickly and never raises (the worker's contract): a failure is
    logged once per method and ignored.
    """

    def __init__(
        self, *, registry: CollectorRegistry | None = None, unhealthy_after_s: float = 60.0
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.unhealthy_after_s = float(unhealthy_after_s)
        r = self.registry
        self.consumed = Counter(
            "diffstream_events_consumed", "Input messages taken from the transport", registry=r
        )
        self.processed = Counter(
            "diffstream_events_processed",
            "Events that went through the pipeline (alerts made, or no work)",
            registry=r,
        )
        self.dead_lettered = Counter(
            "diffstream_events_dead_lettered",
            "Dead-letter records delivered, by error kind",
            ["kind"],
            registry=r,
        )
        self.retried = Counter(
            "diffstream_events_retried",
            "Attempts at an event put off because a dependency (the APDB) was down, by error kind",
            ["kind"],
            registry=r,
        )
        self.no_work = Counter(
            "diffstream_events_no_work", "No-work summaries delivered", registry=r
        )
        self.alerts = Counter(
            "diffstream_alerts_published", "Alerts acknowledged by the broker", registry=r
        )
        self.step_seconds = Histogram(
            "diffstream_step_duration_seconds",
            "Wall time of each pipeline step (imageDifference, imageDifference.zogy ...)",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "diffstream_event_to_alert_seconds",
            "From the event's producedAt to its alerts acknowledged and its offset committed",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "diffstream_consumer_lag",
            "Messages between the consumer's position and the end of an input partition",
            ["partition"],
            registry=r,
        )
        self.last_event = Gauge(
            "diffstream_last_event_timestamp_seconds",
            "Unix time of the last input message taken",
            registry=r,
        )
        self.warmup = Gauge(
            "diffstream_warmup_seconds",
            "Start-up warm-up time (kernels compiled or loaded from the Numba cache)",
            ["ok"],
            registry=r,
        )
        self.worker_state = Gauge(
            "diffstream_worker_state",
            "1 for the worker's current state: assigned (holds partitions), waiting (holds "
            "none), fatal (a client error no retry cures; the worker stops)",
            ["state"],
            registry=r,
        )
        self.group_lag = Gauge(
            "diffstream_group_lag",
            "Events of the whole input topic not yet processed by the group (-1: unknown)",
            registry=r,
        )
        self.group_lag.set(-1)
        self._state = "waiting"
        self._state_since = time.monotonic()
        self._lag: int | None = None
        for state in WORKER_STATES:
            self.worker_state.labels(state=state).set(1 if state == self._state else 0)
        Gauge("diffstream_build_info", "diffstream version", ["version"], registry=r).labels(
            version=__version__
        ).set(1)
        self._warned: set[str] = set()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _failed(self, where: str, exc: Exception) -> None:
        if where not in self._warned:
            self._warned.add(where)
            log.warning("metrics: %s failed (%s: %s); ignoring", where, type(exc).__name__, exc)

    # -- the Metrics protocol ---------------------------------------------------------------
    def on_consumed(self) -> None:
        try:
            self.consumed.inc()
            self.last_event.set(time.time())
        except Exception as exc:
            self._failed("on_consumed", exc)

    def on_processed(self, timings: dict[str, float]) -> None:
        try:
            self.processed.inc()
            for step, seconds in timings.items():
                if seconds is not None and seconds >= 0:
                    self.step_seconds.labels(step=str(step)).observe(float(seconds))
        except Exception as exc:
            self._failed("on_processed", exc)

    def on_dead_letter(self, kind: str) -> None:
        try:
            self.dead_lettered.labels(kind=str(kind)).inc()
        except Exception as exc:
            self._failed("on_dead_letter", exc)

    def on_retry(self, kind: str) -> None:
        try:
            self.retried.labels(kind=str(kind)).inc()
        except Exception as exc:
            self._failed("on_retry", exc)

    def on_no_work(self) -> None:
        try:
            self.no_work.inc()
        except Exception as exc:
            self._failed("on_no_work", exc)

    def on_alerts_published(self, n: int, latency_s: float) -> None:
        try:
            self.alerts.inc(max(0, int(n)))
            if latency_s is not None and latency_s >= 0:
                self.latency.observe(float(latency_s))
        except Exception as exc:
            self._failed("on_alerts_published", exc)

    def on_lag(self, partition: int, lag: int) -> None:
        try:
            self.lag.labels(partition=str(int(partition))).set(max(0, int(lag)))
        except Exception as exc:
            self._failed("on_lag", exc)

    def on_warmup(self, seconds: float, ok: bool) -> None:
        try:
            self.warmup.labels(ok=str(bool(ok)).lower()).set(max(0.0, float(seconds)))
        except Exception as exc:
            self._failed("on_warmup", exc)

    def on_state(self, state: str) -> None:
        try:
            if state != self._state:
                self._state, self._state_since = state, time.monotonic()
            for name in WORKER_STATES:
                self.worker_state.labels(state=name).set(1 if name == state else 0)
        except Exception as exc:
            self._failed("on_state", exc)

    def on_group_lag(self, lag: int | None) -> None:
        try:
            self._lag = None if lag is None else max(0, int(lag))
            self.group_lag.set(-1 if self._lag is None else self._lag)
        except Exception as exc:
            self._failed("on_group_lag", exc)

    # -- health -----------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """(healthy, reason) as ``/healthz`` reports it."""
        if self._state == "fatal":
            return False, "fatal Kafka client error: the worker is stopping"
        waited = time.monotonic() - self._state_since
        if self._state == "waiting" and waited > self.unhealthy_after_s and self._lag != 0:
            lag = "unknown" if self._lag is None else str(self._lag)
            return False, (
                f"no partition assigned for {waited:.0f} s > {self.unhealthy_after_s:g} s "
                f"while the group lag is {lag}"
            )
        return True, "ok"

    # -- serving ----------------------------------------------------------------------------
    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (what ``GET /metrics`` returns)."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0.0 if never set), e.g.
        ``value("diffstream_events_dead_lettered_total", kind="bad_event")``."""
        got = self.registry.get_sample_value(name, labels or None)
        return 0.0 if got is None else float(got)

    def serve(self, port: int, *, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns the bound port
        (``port=0`` picks a free one)."""
        if self._server is not None:
            raise RuntimeError(f"metrics are already served on port {self.port}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be an integer in [0, 65535], got {port!r}")
        self._server = ThreadingHTTPServer((addr, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="diffstream-metrics", daemon=True
        )
        self._thread.start()
        bound = int(self._server.server_port)
        log.info("serving Prometheus metrics on http://%s:%d/metrics (and /healthz)", addr, bound)
        return bound

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_port)

    def close(self) -> None:
        """Stop the HTTP server, if one runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None


def _handler_for(metrics: PrometheusMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            path = self.path.split("?", 1)[0]
            if path in ("/metrics", "/"):
                body, status, ctype = metrics.render(), 200, CONTENT_TYPE_LATEST
            elif path == "/healthz":
                ok, reason = metrics.health()
                body, status = (reason + "\n").encode(), 200 if ok else 503
                ctype = "text/plain; charset=utf-8"
            else:
                body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # a scrape every 15 s would flood the worker's log

    return Handler


def start_metrics(
    port: int | None, *, addr: str = "127.0.0.1", unhealthy_after_s: float = 60.0
) -> PrometheusMetrics:
    """A :class:`PrometheusMetrics`, served on ``addr:port`` unless ``port`` is None.

    What ``diffstream run`` does with ``--metrics-port``::

        metrics = start_metrics(settings.metrics_port, addr=settings.metrics_addr)
        worker = Worker(settings, metrics=metrics)
        try: ... finally: metrics.close()
    """
    metrics = PrometheusMetrics(unhealthy_after_s=unhealthy_after_s)
    if port is not None:
        metrics.serve(port, addr=addr)
    return metrics

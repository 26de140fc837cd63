"""Prometheus metrics of the service (names are a contract: dashboards and alerts use them).

One ``ServingMetrics`` per app, on its own ``CollectorRegistry`` (so several apps can live
in one test process). With several uvicorn workers the server runs them inside
``multiprocess_directory()``, which sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start; prometheus_client then keeps every value in per-process files and ``/metrics``
aggregates them with ``MultiProcessCollector``. Gauges declare how they aggregate across
workers (``multiprocess_mode``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

if TYPE_CHECKING:
    from housing_mlops.store import FlushReport

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# Predictions in $100k.
PREDICTION_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


@contextlib.contextmanager
def multiprocess_directory() -> Iterator[str]:
    """A new directory for the workers' metric files, named by ``PROMETHEUS_MULTIPROC_DIR``
    while the block runs (worker processes started inside inherit it); afterwards the
    directory is removed and the variable restored."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="housing-prometheus-")
    saved = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if saved is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = saved


class ServingMetrics:
    """Every metric ``/metrics`` exposes, plus cached label children for the hot path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The *_created series only add noise to dashboards (a process-wide switch).
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "housing_http_requests",
            "HTTP requests by handler, method and status.",
            ["handler", "method", "status"],
            registry=r,
        )
        self.http_aborted = Counter(
            "housing_http_requests_aborted",
            "Requests whose connection closed before the service answered (the client left "
            "mid-body, or the HTTP server rejected a malformed body itself); they are not in "
            "housing_http_requests_total, which counts answers sent.",
            ["handler", "method"],
            registry=r,
        )
        self.http_duration = Histogram(
            "housing_http_request_duration_seconds",
            "Server-side HTTP request latency by handler.",
            ["handler"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "housing_predictions",
            "Rows predicted, by model version.",
            ["model_version"],
            registry=r,
        )
        self.prediction_value = Histogram(
            "housing_prediction_value",
            "Predicted median house value in $100k, by model version.",
            ["model_version"],
            buckets=PREDICTION_BUCKETS,
            registry=r,
        )
        self.validation_errors = Counter(
            "housing_validation_errors",
            "Rejected input fields by field name (<body>: the body as a whole, "
            "<unknown>: an unexpected field).",
            ["field"],
            registry=r,
        )
        self.model_info = Gauge(
            "housing_model_info",
            "1 for the model version being served.",
            ["name", "version", "alias", "run_id"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_loaded = Gauge(
            "housing_model_loaded_timestamp_seconds",
            "When the served model was loaded (Unix time).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.reloads = Counter(
            "housing_model_reloads", "Successful hot reloads of the model.", registry=r
        )
        self.reload_failures = Counter(
            "housing_model_reload_failures",
            "Hot reloads that failed (the previous model kept serving).",
            registry=r,
        )
        self.log_queue_depth = Gauge(
            "housing_request_log_queue_depth",
            "Request-log rows waiting to be written.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.log_rows = Counter(
            "housing_request_log_rows",
            "Request-log rows written to the database (replayed spool rows included).",
            registry=r,
        )
        self.log_dropped = Counter(
            "housing_request_log_dropped",
            "Request-log rows dropped (queue full, or a write the database refused).",
            registry=r,
        )
        self.log_last_flush = Gauge(
            "housing_request_log_last_flush_timestamp_seconds",
            "When request-log rows last reached the database (Unix time).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.log_spooled = Gauge(
            "housing_request_log_spooled_rows",
            "Request-log rows waiting in the local spool file (the database was unreachable).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.log_write_failures = Counter(
            "housing_request_log_write_failures",
            "Failed attempts to write request-log rows to the database.",
            registry=r,
        )
        self.log_replayed = Counter(
            "housing_request_log_replayed_rows",
            "Request-log rows replayed from the local spool to the database.",
            registry=r,
        )
        self.log_degraded = Gauge(
            "housing_request_log_degraded",
            "1 while the request log's database is unreachable and rows go to the spool.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self._extra_collectors: list[Any] = []
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._model_children: dict[str, tuple[Any, Any]] = {}
        self._info_labels: tuple[str, str, str, str] | None = None

    # -- hot path helpers (label lookups are cached; prometheus_client's are not free)
    def observe_http(self, handler: str, method: str, status: int, seconds: float) -> None:
        key = (handler, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(handler, method, str(status)),
                self.http_duration.labels(handler),
            )
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_aborted(self, handler: str, method: str) -> None:
        """A request that got no answer from the service (rare: no cached child)."""
        self.http_aborted.labels(handler, method).inc()

    def observe_predictions(self, version: str, values: Any) -> None:
        children = self._model_children.get(version)
        if children is None:
            children = (self.predictions.labels(version), self.prediction_value.labels(version))
            self._model_children[version] = children
        children[0].inc(len(values))
        observe = children[1].observe
        for v in values:
            observe(float(v))

    def set_model(self, name: str, version: str, alias: str | None, run_id: str | None) -> None:
        """Point ``housing_model_info`` at the served version (the old one drops to 0)."""
        labels = (name, version, alias or "", run_id or "")
        if self._info_labels is not None and self._info_labels != labels:
            self.model_info.labels(*self._info_labels).set(0)
        self.model_info.labels(*labels).set(1)
        self._info_labels = labels
        self.model_loaded.set_to_current_time()

    def on_log_flush(self, report: FlushReport) -> None:
        """Callback of ``store.RequestLogWriter`` (runs in the writer thread)."""
        if report.written:
            self.log_rows.inc(report.written)
        if report.dropped:
            self.log_dropped.inc(report.dropped)
        if report.write_failures:
            self.log_write_failures.inc(report.write_failures)
        if report.replayed:
            self.log_replayed.inc(report.replayed)
        self.log_queue_depth.set(report.depth)
        self.log_spooled.set(report.spooled)
        self.log_degraded.set(1 if report.degraded else 0)
        if report.last_flush_ts:
            self.log_last_flush.set(report.last_flush_ts)

    # -- exposition
    def add_collector(self, collector: Any) -> None:
        """A custom collector (e.g. drift) served by ``/metrics`` in both modes."""
        self._extra_collectors.append(collector)
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (aggregated over workers in multiprocess mode)."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            for collector in self._extra_collectors:
                registry.register(collector)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def process_exit(self) -> None:
        """Drop this worker's live gauges (multiprocess mode) when it shuts down."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

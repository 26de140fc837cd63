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
            "HTTP requests by handler, method, status and role (champion or challenger: the "
            "model whose answer a /predict request got; empty for other requests and rejections).",
            ["handler", "method", "status", "role"],
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
            "Server-side HTTP request latency by handler and role (see housing_http_requests).",
            ["handler", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "housing_predictions",
            "Rows predicted, by model version and role (a challenger's shadow predictions "
            "count under role=challenger).",
            ["model_version", "role"],
            registry=r,
        )
        self.prediction_value = Histogram(
            "housing_prediction_value",
            "Predicted median house value in $100k, by model version and role.",
            ["model_version", "role"],
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
            "1 for each version being served (the champion, and the challenger when loaded; "
            "its alias label says which).",
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
        self.shadow_dropped = Counter(
            "housing_shadow_dropped",
            "Rows the challenger did not score in shadow because its queue was full "
            "(logged without a shadow prediction).",
            registry=r,
        )
        self.shadow_errors = Counter(
            "housing_shadow_errors",
            "Rows the challenger failed to score in shadow (it raised; logged without a "
            "shadow prediction).",
            registry=r,
        )
        self.shadow_queue_depth = Gauge(
            "housing_shadow_queue_depth",
            "Rows waiting for the challenger's shadow score.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self._extra_collectors: list[Any] = []
        self._http_children: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}
        self._model_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}

    # -- hot path helpers (label lookups are cached; prometheus_client's are not free)
    def observe_http(
        self, handler: str, method: str, status: int, seconds: float, role: str = ""
    ) -> None:
        key = (handler, method, status, role)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(handler, method, str(status), role),
                self.http_duration.labels(handler, role),
            )
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_aborted(self, handler: str, method: str) -> None:
        """A request that got no answer from the service (rare: no cached child)."""
        self.http_aborted.labels(handler, method).inc()

    def observe_predictions(self, version: str, values: Any, role: str = "champion") -> None:
        key = (version, role)
        children = self._model_children.get(key)
        if children is None:
            children = (
                self.predictions.labels(version, role),
                self.prediction_value.labels(version, role),
            )
            self._model_children[key] = children
        children[0].inc(len(values))
        observe = children[1].observe
        for v in values:
            observe(float(v))

    def set_model(
        self,
        name: str,
        version: str,
        alias: str | None,
        run_id: str | None,
        role: str = "champion",
    ) -> None:
        """Point ``housing_model_info`` at the version serving ``role`` (the one it
        replaces drops to 0)."""
        labels = (name, version, alias or "", run_id or "")
        before = self._info_labels.get(role)
        if before is not None and before != labels:
            self.model_info.labels(*before).set(0)
        self.model_info.labels(*labels).set(1)
        self._info_labels[role] = labels
        if role == "champion":
            self.model_loaded.set_to_current_time()

    def unset_model(self, role: str) -> None:
        """No model serves ``role`` any more (the challenger alias was removed)."""
        before = self._info_labels.pop(role, None)
        if before is not None:
            self.model_info.labels(*before).set(0)

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

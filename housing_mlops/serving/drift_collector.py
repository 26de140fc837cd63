"""Prometheus collector exposing the latest stored drift result (read at scrape time).

Metrics: ``housing_drift_score{feature,method}`` (method psi | ks | wasserstein, the last
being the Wasserstein distance divided by the reference std), ``housing_dataset_drift``
(0/1) and ``housing_drift_last_run_timestamp_seconds``. Reading at scrape time keeps the
numbers right with several workers and without a background thread. Before the first
drift run (or without a request log) nothing is exported; a broken database never
breaks ``/metrics``: a database that does not answer within
``store.SERVICE_STATEMENT_TIMEOUT_MS`` (a locked table) leaves the gauges out of that
scrape, with one warning line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

_log = logging.getLogger(__name__)

_METHODS = (("psi", "psi"), ("ks", "ks"), ("wasserstein", "wasserstein_norm"))


class DriftCollector:
    """Custom collector: register it on the registry that serves ``/metrics``."""

    def __init__(self, location: Any, reachable: Callable[[], bool] = lambda: True) -> None:
        self.location = location
        # False while the request log's database is known to be down: a scrape then skips
        # the drift gauges instead of waiting for a connect timeout.
        self.reachable = reachable

    def _latest(self) -> dict[str, Any] | None:
        from housing_mlops import store

        if not self.reachable():
            return None
        # A bounded session: a locked drift table or a silent server leaves the gauges out
        # of this scrape after a few seconds instead of holding the scrape.
        return store.read_latest_drift_run(
            self.location, statement_timeout_ms=store.SERVICE_STATEMENT_TIMEOUT_MS
        )

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from housing_mlops import store
        from housing_mlops.errors import HousingError

        try:
            run = self._latest()
        except (store.LogUnavailable, HousingError) as exc:  # an outage: one line
            _log.warning("drift collector: drift gauges left out of this scrape: %s", exc)
            return
        except Exception:  # noqa: BLE001 - a scrape must not fail because of the drift tables
            _log.warning("drift collector: cannot read %s", self.location, exc_info=True)
            return
        if run is None:
            return
        scores = GaugeMetricFamily(
            "housing_drift_score",
            "Latest drift score per column (feature or prediction) and method "
            "(psi, ks statistic, wasserstein = distance / reference std)",
            labels=["feature", "method"],
        )
        for score in run.get("scores", []):
            for method, key in _METHODS:
                value = score.get(key)
                if value is not None and math.isfinite(float(value)):
                    scores.add_metric([score["feature"], method], float(value))
        yield scores
        yield GaugeMetricFamily(
            "housing_dataset_drift",
            "1 when the latest drift run found dataset drift, else 0",
            value=1.0 if run.get("dataset_drift") else 0.0,
        )
        yield GaugeMetricFamily(
            "housing_drift_last_run_timestamp_seconds",
            "Unix time of the latest stored drift run",
            value=float(run.get("created_at") or 0.0),
        )

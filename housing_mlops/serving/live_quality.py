"""Prometheus gauges of live quality: each served model's error on the labelled requests.

Every ``serve.live_quality_interval_s`` a background task reads, in a worker thread, the
error sums of the requests of the last ``serve.live_quality_window_s`` that have a true
value (``store.live_error_sums``: aggregated in the database, no row is fetched), and
keeps them; a scrape only formats the kept numbers, so ``/metrics`` never waits for the
database. Metrics, by ``role`` and ``model_version``:

- ``housing_live_rmse``: live RMSE over the window (only where labelled rows exist);
- ``housing_live_labelled_rows``: labelled rows over the window (0 for a served model
  that has none yet);
- ``housing_model_holdout_rmse``: the served version's offline holdout RMSE from its
  registry metrics (what the ``LiveRmseAboveHoldout`` alert compares against).

A challenger in shadow mode is scored on the rows it shadowed (role ``challenger``).
A broken or unreachable database keeps the last numbers and never breaks ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from housing_mlops.inference.loaded_model import ModelMeta
from housing_mlops.serving.daemon_thread import in_daemon_thread

_log = logging.getLogger(__name__)

# (role, model_version) -> (labelled rows, live RMSE or None)
Snapshot = dict[tuple[str, str], tuple[int, float | None]]


class LiveQualityCollector:
    """Custom collector plus the task that refreshes it; register it on the metrics."""

    def __init__(
        self,
        location: Any,
        served: Callable[[], list[tuple[str, ModelMeta]]],
        interval_s: float,
        window_s: float,
        reachable: Callable[[], bool] = lambda: True,
    ) -> None:
        self.location = location
        # The models being served now, with their role: their holdout RMSE is exported.
        self.served = served
        self.interval_s = float(interval_s)
        self.window_s = float(window_s)
        self.reachable = reachable
        self.snapshot: Snapshot = {}
        self.refreshed_at: float | None = None

    def refresh(self, now: float | None = None) -> None:
        """Read the window's error sums (blocking: call it in a thread)."""
        from housing_mlops import store

        if not self.reachable():
            return
        now = time.time() if now is None else now
        db = store.open_readonly(self.location)
        if db is None:
            sums: list[dict[str, Any]] = []
        else:
            try:
                sums = store.live_error_sums(db, since_ts=now - self.window_s, until_ts=now)
            finally:
                db.close()
        self.snapshot = {
            (s["role"], str(s["model_version"])): (
                int(s["rows"]),
                math.sqrt(s["sse"] / s["rows"]) if s["rows"] else None,
            )
            for s in sums
        }
        self.refreshed_at = now

    async def run(self) -> None:
        """Refresh now and then every ``interval_s`` until cancelled."""
        while True:
            try:
                # A thread of its own, not asyncio's default executor: a query held by a
                # locked table (VACUUM FULL requests) would otherwise keep the process from
                # exiting after its shutdown (serving.daemon_thread).
                await in_daemon_thread(self.refresh, name="live-quality")
            except Exception:  # noqa: BLE001 - keep the last numbers, try again later
                _log.warning("live quality: cannot read %s", self.location, exc_info=True)
            await asyncio.sleep(self.interval_s)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["role", "model_version"]
        rmse = GaugeMetricFamily(
            "housing_live_rmse",
            "Live RMSE ($100k) of each model on the labelled requests of the last "
            "serve.live_quality_window_s (a challenger in shadow: on the rows it shadowed)",
            labels=labels,
        )
        rows = GaugeMetricFamily(
            "housing_live_labelled_rows",
            "Labelled request rows each model is scored on over the last "
            "serve.live_quality_window_s",
            labels=labels,
        )
        holdout = GaugeMetricFamily(
            "housing_model_holdout_rmse",
            "Offline holdout RMSE ($100k) of each served model version (registry metrics)",
            labels=labels,
        )
        snapshot = dict(self.snapshot)
        try:
            served = self.served()
        except Exception:  # noqa: BLE001 - a scrape must not fail because of a model swap
            _log.warning("live quality: cannot list the served models", exc_info=True)
            served = []
        for role, meta in served:
            key = (role, str(meta.version))
            if self.refreshed_at is not None:
                snapshot.setdefault(key, (0, None))
            value = meta.metrics.get("holdout_rmse")
            if value is not None and math.isfinite(float(value)):
                holdout.add_metric(list(key), float(value))
        for key, (n, value) in sorted(snapshot.items()):
            rows.add_metric(list(key), float(n))
            if value is not None:
                rmse.add_metric(list(key), value)
        yield rmse
        yield rows
        yield holdout

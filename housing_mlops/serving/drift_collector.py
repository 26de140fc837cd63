"""Prometheus collector exposing the latest stored drift result (read at scrape time).

Metrics: ``housing_drift_score{feature,method}``, ``housing_dataset_drift`` (0/1) and
``housing_drift_last_run_timestamp_seconds``. Reading at scrape time keeps the numbers
right with several workers and without a background thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DriftCollector:
    """Custom collector: register it on the registry that serves ``/metrics``."""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)

    def collect(self) -> Iterator[Any]:
        # Filled in by the drift issue; yields nothing until a drift run exists.
        return iter(())

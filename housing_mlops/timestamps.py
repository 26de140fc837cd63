"""The one timestamp format: ISO-8601 in UTC to the second, e.g. ``2026-01-31T12:00:00+00:00``.

Manifests, registry tags (evaluation, promotion history), drift windows and the report's
tables all write times this way, so they sort as text and read back with
``datetime.fromisoformat``. ``readable_utc`` is the same instant for a reader of the
report's prose (``2026-01-31 12:00:00 UTC``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso_utc(ts: float | None = None) -> str:
    """Epoch seconds (default: now) as ISO-8601 UTC to the second."""
    when = datetime.fromtimestamp(time.time() if ts is None else float(ts), tz=UTC)
    return when.isoformat(timespec="seconds")


def iso_utc_ms(ms: int | None) -> str | None:
    """Epoch milliseconds (MLflow's timestamps) as ``iso_utc``; None stays None."""
    return None if ms is None else iso_utc(ms / 1000)


def readable_utc(ts: float | None) -> str:
    """Epoch seconds as ``YYYY-MM-DD HH:MM:SS UTC`` for prose; ``–`` for None."""
    if ts is None:
        return "–"
    return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

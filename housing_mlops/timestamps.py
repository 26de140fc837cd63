"""The one timestamp format: ISO-8601 in UTC to the second, e.g. ``2026-01-31T12:00:00+00:00``.

Manifests, registry tags (evaluation, promotion history), drift windows and the report's
tables all write times this way, so they sort as text and read back with
``datetime.fromisoformat``. ``readable_utc`` is the same instant for a reader of the
report's prose (``2026-01-31 12:00:00 UTC``).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ACCEPTED_TIME_FORMS = (
    "a duration such as 30m, 12h, 7d or 2w (units s, m, h, d, w), or an ISO-8601 "
    "timestamp such as 2026-01-31 or 2026-01-31T12:00:00Z (no zone means UTC)"
)


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


def parse_time(value: str, now: float) -> float:
    """Epoch seconds (UTC) for a duration back from ``now`` or an ISO-8601 timestamp.

    Raises ValueError saying why (``is not a time``, ``is out of range ...``) for anything
    else, the empty string and times outside the years 1 to 9999 included. The one rule
    for ``--since`` / ``--until`` and the config's ``drift.default_since``.
    """
    text = (value or "").strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.lower())
    if match:
        ts = now - float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("is not a time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ts = when.timestamp()
    # Every time is printed back (window text, stored run), so it must be a datetime.
    try:
        iso_utc(ts)
    except (OverflowError, ValueError, OSError):
        raise ValueError("is out of range (times must fall in the years 1 to 9999 UTC)") from None
    return ts

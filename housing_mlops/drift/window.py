"""The time window of a drift check: ``--since`` / ``--until`` as durations or ISO-8601 times."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from housing_mlops.errors import UsageError
from housing_mlops.timestamps import iso_utc

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ACCEPTED_TIME_FORMS = (
    "a duration such as 30m, 12h, 7d or 2w (units s, m, h, d, w), or an ISO-8601 "
    "timestamp such as 2026-01-31 or 2026-01-31T12:00:00Z (no zone means UTC)"
)


def parse_when(value: str, now: float, option: str = "--since") -> float:
    """Epoch seconds (UTC) for a duration back from ``now`` or an ISO-8601 timestamp.

    Raises UsageError naming the accepted forms for anything else, the empty string and
    times outside the years 1 to 9999 included (``99999999999d`` back from now, or
    9999-12-31 at UTC-14, which is year 10000 in UTC).
    """
    text = (value or "").strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.lower())
    if match:
        ts = now - float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise UsageError(
                f"{option} {value!r} is not a time: use {ACCEPTED_TIME_FORMS}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ts = when.timestamp()
    # Every time is printed back (window text, stored run), so it must be a datetime.
    try:
        iso_utc(ts)
    except (OverflowError, ValueError, OSError):
        raise UsageError(
            f"{option} {value!r} is out of range (times must fall in the years 1 to 9999 "
            f"UTC): use {ACCEPTED_TIME_FORMS}"
        ) from None
    return ts


def resolve_window(
    since: str | None, until: str | None, default_since: str, now: float
) -> tuple[float, float]:
    """(since_ts, until_ts) from the CLI values; until defaults to now. since < until."""
    # None means the option was not given; an empty value was given and is malformed.
    until_ts = parse_when(until, now, "--until") if until is not None else now
    # Durations count back from now for both ends (``--since 2h --until 1h`` is the hour
    # that ended an hour ago), as in journalctl and git.
    since_ts = parse_when(default_since if since is None else since, now, "--since")
    if since_ts >= until_ts:
        raise UsageError(
            f"the window is empty: --since ({iso_utc(since_ts)}) must be before "
            f"--until ({iso_utc(until_ts)})"
        )
    return since_ts, until_ts

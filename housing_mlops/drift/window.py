"""The time window of a drift check: ``--since`` / ``--until`` as durations or ISO-8601 times."""

from __future__ import annotations

from housing_mlops.errors import UsageError
from housing_mlops.timestamps import ACCEPTED_TIME_FORMS, iso_utc, parse_time

__all__ = ["ACCEPTED_TIME_FORMS", "parse_when", "resolve_window"]


def parse_when(value: str, now: float, option: str = "--since") -> float:
    """Epoch seconds (UTC) for a duration back from ``now`` or an ISO-8601 timestamp.

    Raises UsageError naming the accepted forms for anything else, the empty string and
    times outside the years 1 to 9999 included (``99999999999d`` back from now, or
    9999-12-31 at UTC-14, which is year 10000 in UTC).
    """
    try:
        return parse_time(value, now)
    except ValueError as exc:
        raise UsageError(f"{option} {value!r} {exc}: use {ACCEPTED_TIME_FORMS}") from None


def resolve_window(
    since: str | None, until: str | None, default_since: str, now: float
) -> tuple[float, float]:
    """(since_ts, until_ts) from the CLI values; until defaults to now. since < until."""
    # None means the option was not given; an empty value was given and is malformed.
    until_ts = parse_when(until, now, "--until") if until is not None else now
    # Durations count back from now for both ends (``--since 2h --until 1h`` is the hour
    # that ended an hour ago), as in journalctl and git.
    if since is None:
        since_ts = parse_when(default_since, now, "drift.default_since")
    else:
        since_ts = parse_when(since, now, "--since")
    if since_ts >= until_ts:
        raise UsageError(
            f"the window is empty: --since ({iso_utc(since_ts)}) must be before "
            f"--until ({iso_utc(until_ts)})"
        )
    return since_ts, until_ts

"""Ground truth in the request log: the ``feedback`` table, and the labelled rows it gives.

``apply_feedback`` writes labels (POST /feedback, ``housing feedback FILE``): every item is
classified as applied, unknown (no answered request row with that ``(request_id,
row_index)``), duplicate (the row already has a label, or the item repeats an earlier one
of the same batch) or invalid (an empty id, a negative row, a non-finite value), and the
applied ones are written in ONE transaction on either backend. The items go into a
temporary table (multi-row ``INSERT ... VALUES`` of 1,000 rows on SQLite, one ``COPY`` on
PostgreSQL), one join classifies them and one ``INSERT ... SELECT`` writes them: no query
per item (100,000 labels: about 1 s on either backend, `make bench-feedback`).

``labelled_rows`` joins every label to the answered request row it labels: what live quality
(``evaluate --live``, the report, the service's live-RMSE gauge) is computed from. The
table itself is described in ``store.schema``.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops.store.connection import database_errors, tables
from housing_mlops.store.location import LogLocation, parse_log_location
from housing_mlops.store.outage import LogUnavailable
from housing_mlops.store.request_log import answered_clause

if TYPE_CHECKING:
    import numpy as np

    from housing_mlops.store.connection import LogConnection

_LABELLED_COLUMNS = (
    "r.ts",
    "r.model_version",
    "r.role",
    "r.prediction",
    "r.shadow_version",
    "r.shadow_prediction",
    "f.actual",
    "f.received_at",
)


@dataclass(frozen=True)
class LabelledRows:
    """Answered rows that have a true value, oldest first, one array per column.

    ``model_version``/``prediction`` are the answer the client got and ``role`` whose it
    was (``champion``/``challenger``; None for rows logged before roles existed).
    ``shadow_version``/``shadow_prediction`` are the challenger's shadow prediction of the
    same row (None/NaN when it was not shadowed), for paired comparisons.
    """

    ts: np.ndarray  # float64, UTC Unix seconds the request arrived
    model_version: np.ndarray  # object (str)
    role: np.ndarray  # object (str or None)
    prediction: np.ndarray  # float64, $100k
    shadow_version: np.ndarray  # object (str or None)
    shadow_prediction: np.ndarray  # float64, NaN when not shadowed
    actual: np.ndarray  # float64, $100k
    received_at: np.ndarray  # float64, UTC Unix seconds the label was stored

    def __len__(self) -> int:
        return int(self.ts.shape[0])


def _empty() -> LabelledRows:
    import numpy as np

    floats = np.empty(0, dtype=np.float64)
    objects = np.empty(0, dtype=object)
    return LabelledRows(floats, objects, objects, floats, objects, floats, floats, floats)


def labelled_rows(
    conn: LogConnection | None,
    since_ts: float | None = None,
    until_ts: float | None = None,
) -> LabelledRows:
    """Every answered request row in ``[since_ts, until_ts)`` (request time) with a label."""
    import numpy as np

    if conn is None or not {"requests", "feedback"} <= tables(conn):
        return _empty()
    clause, params = answered_clause(since_ts, until_ts, "r.")
    rows = conn.execute(
        f"SELECT {', '.join(_LABELLED_COLUMNS)} FROM feedback f "  # noqa: S608 - fixed names
        "JOIN requests r ON r.request_id = f.request_id "
        "AND COALESCE(r.row_index, 0) = f.row_index "
        f"WHERE {clause} ORDER BY r.ts, r.id",
        params,
    ).fetchall()
    if not rows:
        return _empty()
    columns = list(zip(*rows, strict=True))

    def floats(values: tuple[Any, ...]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def objects(values: tuple[Any, ...]) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = [None if v is None else str(v) for v in values]
        return out

    return LabelledRows(
        ts=floats(columns[0]),
        model_version=objects(columns[1]),
        role=objects(columns[2]),
        prediction=floats(columns[3]),
        shadow_version=objects(columns[4]),
        shadow_prediction=floats(columns[5]),
        actual=floats(columns[6]),
        received_at=floats(columns[7]),
    )


# ------------------------------------------------------------------------ writing labels
#: The reasons an item is not applied, in the order they are reported.
REASONS = ("unknown", "duplicate", "invalid")
#: Examples kept per reason (the counts are always complete).
EXAMPLES_PER_REASON = 5
#: Items per multi-row INSERT into the temporary table (4 parameters each: well under
#: SQLite's 32,766 and PostgreSQL's 65,535 parameters per statement).
_CHUNK = 1000
_MAX_ID_LENGTH = 200
#: The largest row_index taken (far beyond any batch; keeps the value an int in every
#: database, where a larger Python int would overflow the column).
MAX_ROW_INDEX = 2**31 - 1

#: One label: (request_id, row_index, actual). Anything else is counted as invalid.
FeedbackItem = tuple[Any, Any, Any]


@dataclass(frozen=True)
class FeedbackResult:
    """What became of a batch of labels.

    ``applied`` were written; the rest are counted per reason (``unknown``, ``duplicate``,
    ``invalid``) with up to ``EXAMPLES_PER_REASON`` examples each (``position``: the
    item's 0-based place in the batch). With ``all_or_nothing`` and any bad item, nothing
    is written (``applied`` 0, ``rejected`` True).
    """

    received: int
    applied: int
    unknown: int
    duplicate: int
    invalid: int
    all_or_nothing: bool
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def bad(self) -> int:
        return self.unknown + self.duplicate + self.invalid

    @property
    def rejected(self) -> bool:
        return self.all_or_nothing and self.bad > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "applied": self.applied,
            "unknown": self.unknown,
            "duplicate": self.duplicate,
            "invalid": self.invalid,
            "rejected": self.rejected,
            "all_or_nothing": self.all_or_nothing,
            "examples": self.examples,
            "seconds": round(self.seconds, 3),
        }


def item_problem(request_id: Any, row_index: Any, actual: Any) -> str | None:
    """Why an item cannot be a label (None when it can)."""
    if not isinstance(request_id, str) or not request_id.strip():
        return "request_id must be a non-empty string"
    if len(request_id) > _MAX_ID_LENGTH:
        return f"request_id is longer than {_MAX_ID_LENGTH} characters"
    if "\x00" in request_id:
        return "request_id contains a NUL character"
    if isinstance(row_index, bool) or not isinstance(row_index, int) or row_index < 0:
        return "row_index must be an integer >= 0"
    if row_index > MAX_ROW_INDEX:
        return f"row_index must be at most {MAX_ROW_INDEX}"
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        return "actual must be a number"
    if not math.isfinite(float(actual)):
        return "actual must be a finite number"
    return None


class _Tally:
    def __init__(self) -> None:
        self.counts = dict.fromkeys(REASONS, 0)
        self.examples: dict[str, list[dict[str, Any]]] = {r: [] for r in REASONS}

    def add(self, reason: str, position: int, item: FeedbackItem, why: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < EXAMPLES_PER_REASON:
            request_id, row_index, actual = item
            self.examples[reason].append(
                {
                    "position": position,
                    "request_id": request_id if isinstance(request_id, str) else repr(request_id),
                    "row_index": row_index if isinstance(row_index, int) else repr(row_index),
                    "actual": actual
                    if isinstance(actual, int | float) and math.isfinite(float(actual))
                    else repr(actual),
                    "reason": why,
                }
            )


def apply_feedback(
    where: Path | str | LogLocation | LogConnection,
    items: Sequence[FeedbackItem],
    *,
    source: str,
    all_or_nothing: bool,
    progress: Callable[[str, int, int], None] | None = None,
    statement_timeout_ms: int | None = None,
) -> FeedbackResult:
    """Store true values for logged prediction rows, in one transaction.

    ``where`` is the log's location (opened here and closed after; a log that does not
    exist yet makes every valid item unknown) or an open connection (left open).
    ``all_or_nothing``: any unknown, duplicate or invalid item means nothing is written.
    Raises ``LogUnavailable`` when the database cannot be read or written (nothing is
    written then either); ConfigError when a PostgreSQL log cannot be reached.
    ``statement_timeout_ms`` bounds a PostgreSQL log opened here (``open_log``): a locked
    table is then ``LogUnavailable`` after that long instead of a wait for the lock.
    """
    started = time.perf_counter()
    tally = _Tally()
    valid: list[tuple[str, int, float, int]] = []
    seen: set[tuple[str, int]] = set()
    for position, item in enumerate(items):
        try:
            request_id, row_index, actual = item
        except (TypeError, ValueError):
            why = "not a (request_id, row_index, actual)"
            tally.add("invalid", position, (item, None, None), why)
            continue
        problem = item_problem(request_id, row_index, actual)
        if problem is not None:
            tally.add("invalid", position, (request_id, row_index, actual), problem)
            continue
        key = (request_id, row_index)
        if key in seen:
            tally.add("duplicate", position, key + (actual,), "labelled twice in this batch")
            continue
        seen.add(key)
        valid.append((request_id, row_index, float(actual), position))
    del seen

    conn: LogConnection | None
    borrowed = not isinstance(where, Path | str | LogLocation)
    if borrowed:
        conn = where  # type: ignore[assignment]
    else:
        location = parse_log_location(where)  # type: ignore[arg-type]
        conn = _open_for_labels(location, statement_timeout_ms)
    applied = 0
    try:
        if conn is None:  # no log yet: nothing can be labelled
            for request_id, row_index, actual, position in valid:
                tally.add("unknown", position, (request_id, row_index, actual), _UNKNOWN)
        elif valid:
            applied = _write(conn, valid, tally, source, all_or_nothing, progress)
    finally:
        if conn is not None and not borrowed:
            conn.close()
    return FeedbackResult(
        received=len(items),
        applied=applied,
        unknown=tally.counts["unknown"],
        duplicate=tally.counts["duplicate"],
        invalid=tally.counts["invalid"],
        all_or_nothing=all_or_nothing,
        examples={r: e for r, e in tally.examples.items() if e},
        seconds=time.perf_counter() - started,
    )


_UNKNOWN = "no answered request row with this request_id and row_index in the log"
_ALREADY = "this row already has a label"


def _open_for_labels(
    location: LogLocation, statement_timeout_ms: int | None
) -> LogConnection | None:
    from housing_mlops.store.connection import open_log

    try:
        return open_log(location, create=False, statement_timeout_ms=statement_timeout_ms)
    except (sqlite3.Error, OSError) as exc:
        raise LogUnavailable(f"request log {location}: {exc}") from None


def _write(
    conn: LogConnection,
    valid: list[tuple[str, int, float, int]],
    tally: _Tally,
    source: str,
    all_or_nothing: bool,
    progress: Callable[[str, int, int], None] | None,
) -> int:
    errors = database_errors(conn)
    sqlite = isinstance(conn, sqlite3.Connection)
    try:
        if isinstance(conn, sqlite3.Connection):
            conn.execute("DROP TABLE IF EXISTS temp.feedback_in")
            # The write lock first: nobody can label the same rows between the
            # classification below and the insert.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "CREATE TEMP TABLE feedback_in "
                "(request_id TEXT, row_index INTEGER, actual REAL, position INTEGER)"
            )
            applied = _classify_and_insert(conn, valid, tally, source, all_or_nothing, progress)
            conn.execute("DROP TABLE temp.feedback_in")
            if applied:
                conn.commit()
            else:
                conn.rollback()
            return applied
        with conn:
            conn.execute(
                "CREATE TEMP TABLE feedback_in (request_id TEXT, row_index BIGINT, "
                "actual DOUBLE PRECISION, position BIGINT) ON COMMIT DROP"
            )
            applied = _classify_and_insert(conn, valid, tally, source, all_or_nothing, progress)
            if not applied:
                raise _NothingToCommit
        return applied
    except _NothingToCommit:
        return 0
    except errors as exc:
        if sqlite:
            _rollback_quietly(conn)
        where = getattr(conn, "location", None)
        text = where.redact(str(exc)) if isinstance(where, LogLocation) else str(exc)
        raise LogUnavailable(f"request log {where or 'database'}: {text}") from None
    except BaseException:
        if sqlite:
            _rollback_quietly(conn)
        raise


class _NothingToCommit(Exception):
    """Rolls a PostgreSQL transaction back (``with conn:`` commits otherwise)."""


def _rollback_quietly(conn: LogConnection) -> None:
    if not isinstance(conn, sqlite3.Connection):
        return
    try:
        conn.rollback()
        conn.execute("DROP TABLE IF EXISTS temp.feedback_in")
    except sqlite3.Error:
        pass


def _classify_and_insert(
    conn: LogConnection,
    valid: list[tuple[str, int, float, int]],
    tally: _Tally,
    source: str,
    all_or_nothing: bool,
    progress: Callable[[str, int, int], None] | None,
) -> int:
    total = len(valid)
    if progress is not None:
        progress("loading labels", 0, total)
    if isinstance(conn, sqlite3.Connection):
        for start in range(0, total, _CHUNK):
            chunk = valid[start : start + _CHUNK]
            conn.execute(
                "INSERT INTO feedback_in (request_id, row_index, actual, position) VALUES "  # noqa: S608 - placeholders only
                + ", ".join(["(?, ?, ?, ?)"] * len(chunk)),
                [value for row in chunk for value in row],
            )
    else:  # COPY: ten times faster than multi-row INSERTs through psycopg
        conn.copy_rows("feedback_in", ("request_id", "row_index", "actual", "position"), valid)
    if progress is not None:
        progress("matching labels to logged requests", total, total)
    # The bad ones only (usually few): rows that already have a label, and unknown rows.
    # Two plain (anti-)joins, not one WHERE with NOT EXISTS ... OR EXISTS: PostgreSQL
    # answers that OR by hashing every answered request (130 ms per label on 100,000
    # logged requests) instead of looking the few labels up in the indexes.
    if not isinstance(conn, sqlite3.Connection):
        conn.execute("ANALYZE feedback_in")  # the planner's row count of the new table
    found = conn.execute(
        "SELECT t.request_id, t.row_index, t.actual, t.position, 1 FROM feedback_in t "
        "JOIN feedback f ON f.request_id = t.request_id AND f.row_index = t.row_index "
        "UNION ALL "
        "SELECT t.request_id, t.row_index, t.actual, t.position, 0 FROM feedback_in t "
        "WHERE NOT EXISTS (SELECT 1 FROM requests r WHERE r.request_id = t.request_id "
        "AND COALESCE(r.row_index, 0) = t.row_index AND r.status = 200)"
    ).fetchall()
    bad: dict[int, tuple[Any, ...]] = {}
    for row in found:  # a labelled row is a duplicate even if its request is gone
        position = int(row[3])
        if position not in bad or row[4]:
            bad[position] = row
    for request_id, row_index, actual, position, labelled in (bad[k] for k in sorted(bad)):
        item = (request_id, int(row_index), float(actual))
        if labelled:
            tally.add("duplicate", int(position), item, _ALREADY)
        else:
            tally.add("unknown", int(position), item, _UNKNOWN)
    expected = total - len(bad)
    if expected == 0 or (all_or_nothing and sum(tally.counts.values()) > 0):
        return 0
    if progress is not None:
        progress("writing labels", total, total)
    cursor = conn.execute(
        "INSERT INTO feedback (request_id, row_index, actual, received_at, source) "
        "SELECT t.request_id, t.row_index, t.actual, ?, ? FROM feedback_in t "
        "WHERE EXISTS (SELECT 1 FROM requests r WHERE r.request_id = t.request_id "
        "AND COALESCE(r.row_index, 0) = t.row_index AND r.status = 200) "
        "ORDER BY t.position "
        "ON CONFLICT (request_id, row_index) DO NOTHING",
        [time.time(), source],
    )
    applied = int(cursor.rowcount)
    # Labelled by someone else between the classification and the insert (PostgreSQL
    # only: SQLite holds the write lock): duplicates after all.
    raced = expected - applied
    if raced > 0:
        tally.counts["duplicate"] += raced
        if all_or_nothing:
            raise _NothingToCommit
    return applied


def live_error_sums(
    conn: LogConnection | None,
    since_ts: float | None = None,
    until_ts: float | None = None,
) -> list[dict[str, Any]]:
    """Per (role, model version): labelled rows and the sums live RMSE/MAE are made of.

    Aggregated in the database (the service's live-quality gauges read it every minute
    over a day of traffic, so no row is fetched): ``rows``, ``sse`` (sum of squared
    errors) and ``sae`` (sum of absolute errors) of each version's predictions against
    the labels. A version counts the rows it answered, plus, for a challenger in shadow,
    the rows it scored in shadow (``shadow_prediction``, role ``challenger``): the same
    rows and errors ``labelled_rows`` gives. Rows logged before roles existed count as
    the champion's. Sorted by role, then version.
    """
    if conn is None or not {"requests", "feedback"} <= tables(conn):
        return []
    clause, params = answered_clause(since_ts, until_ts, "r.")
    join = (
        "FROM feedback f JOIN requests r ON r.request_id = f.request_id "
        f"AND COALESCE(r.row_index, 0) = f.row_index WHERE {clause}"
    )
    answered = conn.execute(
        "SELECT COALESCE(r.role, 'champion') AS rl, r.model_version, COUNT(*), "  # noqa: S608
        "SUM((r.prediction - f.actual) * (r.prediction - f.actual)), "
        f"SUM(ABS(r.prediction - f.actual)) {join} AND r.prediction IS NOT NULL "
        "GROUP BY rl, r.model_version",
        params,
    ).fetchall()
    shadowed = conn.execute(
        "SELECT 'challenger', r.shadow_version, COUNT(*), "  # noqa: S608 - fixed names
        "SUM((r.shadow_prediction - f.actual) * (r.shadow_prediction - f.actual)), "
        f"SUM(ABS(r.shadow_prediction - f.actual)) {join} "
        "AND r.shadow_prediction IS NOT NULL GROUP BY r.shadow_version",
        params,
    ).fetchall()
    totals: dict[tuple[str, str | None], list[float]] = {}
    for role, version, rows, sse, sae in [*answered, *shadowed]:
        key = (str(role), None if version is None else str(version))
        into = totals.setdefault(key, [0, 0.0, 0.0])
        into[0] += int(rows)
        into[1] += float(sse or 0.0)
        into[2] += float(sae or 0.0)
    return [
        {"role": role, "model_version": version, "rows": int(n), "sse": sse, "sae": sae}
        for (role, version), (n, sse, sae) in sorted(
            totals.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))
        )
    ]

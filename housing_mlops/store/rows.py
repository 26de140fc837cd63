"""The request-log row: ``LoggedRequest``, and the column values a writer inserts.

``LoggedRequest`` is one row of the ``requests`` table (see ``store.schema``);
``row_values`` turns it into a plain tuple in ``ROW_COLUMNS`` order (what the writer
queues and inserts).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from housing_mlops.columns import FEATURES


@dataclass(slots=True, kw_only=True)
class LoggedRequest:
    """One row of the request log: an answered prediction row, or a rejected request."""

    ts: float  # UTC Unix time the request arrived
    request_id: str
    row_index: int  # position in a batch (0 for a single house or a rejection)
    model_name: str | None
    model_version: str | None  # None when rejected
    features: Sequence[float] | None  # the 8 raw features in FEATURES order; None if rejected
    prediction: float | None  # in $100k; None when rejected
    latency_ms: float | None  # of the whole request (every row of a batch carries it)
    status: int  # HTTP status
    error: str | None = None  # why it was rejected
    instance: str | None = None  # the replica that answered (serve.instance or host:pid)
    role: str | None = None  # "champion" or "challenger": whose answer the client got
    shadow_version: str | None = None  # the challenger version that scored it in shadow
    shadow_prediction: float | None = None  # the challenger's shadow prediction, $100k


_NO_FEATURES = (None,) * len(FEATURES)
# Every column but the id, in the order ``row_values`` gives them.
ROW_COLUMNS = (
    "ts",
    "request_id",
    "row_index",
    "model_name",
    "model_version",
    *FEATURES,
    "prediction",
    "latency_ms",
    "status",
    "error",
    "instance",
    "role",
    "shadow_version",
    "shadow_prediction",
)
_ROW_PLACEHOLDERS = f"({', '.join('?' * len(ROW_COLUMNS))})"


def quoted(columns: Sequence[str]) -> str:
    """Column names quoted for SQL, comma-separated (fixed names, never user input)."""
    return ", ".join(f'"{c}"' for c in columns)


#: Rows per INSERT statement of ``insert_rows``. Multi-row INSERTs, not ``executemany``: the
#: sqlite3 module releases the GIL around every statement step, so ``executemany`` handed
#: the GIL from the writer thread to the event loop and back once per row, a futex wake-up
#: on both threads each time. With 500-row statements `housing serve` spent 13-28% less CPU
#: per request (6 A/B pairs of 8 s under wrk, README "Serving", levers table).
ROWS_PER_INSERT = 500


@functools.lru_cache(maxsize=16)
def _insert_sql(table: str, rows: int) -> str:
    values = ", ".join([_ROW_PLACEHOLDERS] * rows)
    return f"INSERT INTO {table} ({quoted(ROW_COLUMNS)}) VALUES {values}"  # noqa: S608 - fixed names


def insert_rows(conn: Any, table: str, rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows (``ROW_COLUMNS`` order) into the SQLite ``table`` (``requests``, or a
    spool's ``spool``) on ``conn``, ``ROWS_PER_INSERT`` rows per statement; the caller
    holds the transaction."""
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        conn.execute(_insert_sql(table, len(chunk)), list(itertools.chain(*chunk)))


def answered_values(
    ts: float,
    request_id: str,
    model_name: str,
    model_version: str,
    features: Sequence[Sequence[float]],
    predictions: Sequence[float],
    latency_ms: float,
    instance: str | None,
    role: str,
) -> list[tuple[Any, ...]]:
    """The column values of one request's answered rows (status 200, no shadow
    prediction), exactly what ``row_values`` gives for their ``LoggedRequest`` rows, built
    without those objects: the service's hot path, once per answered request."""
    return [
        (
            ts,
            request_id,
            i,
            model_name,
            model_version,
            *row,
            pred,
            latency_ms,
            200,
            None,
            instance,
            role,
            None,
            None,
        )
        for i, (row, pred) in enumerate(zip(features, predictions, strict=True))
    ]


def row_values(row: LoggedRequest) -> tuple[Any, ...]:
    return (
        row.ts,
        row.request_id,
        row.row_index,
        row.model_name,
        row.model_version,
        *(_NO_FEATURES if row.features is None else row.features),
        row.prediction,
        row.latency_ms,
        row.status,
        row.error,
        row.instance,
        row.role,
        row.shadow_version,
        row.shadow_prediction,
    )

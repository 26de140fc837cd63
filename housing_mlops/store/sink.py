"""Where the background writer puts request-log rows: ``open_sink(location)``.

A sink has ``write(rows)`` (every row, in order, in one transaction) and ``close()``.
When the database cannot take the rows (PostgreSQL down or restarting, a SQLite file
locked or on a full disk) ``write`` raises ``LogUnavailable`` and nothing of the batch is
kept, so the caller still owns every row (it queues or spools them and tries again); the
next ``write`` reconnects. When it refuses a value of the batch for good (a constraint,
a column's type) ``write`` raises ``RowsRefused``, nothing of the batch written either.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from housing_mlops.errors import HousingError
from housing_mlops.store.location import LogLocation, parse_log_location
from housing_mlops.store.outage import LogUnavailable, RowsRefused
from housing_mlops.store.rows import insert_rows


class LogSink(Protocol):
    def write(self, rows: Sequence[Sequence[Any]]) -> None: ...

    def close(self) -> None: ...


class SqliteSink:
    """Writes rows to the SQLite log (created when missing): multi-row INSERTs
    (``rows.insert_rows``) in one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        from housing_mlops.store.connection import open_log

        try:
            conn = self._conn or open_log(self.path, create=True)
            self._conn = conn
            with conn:
                insert_rows(conn, "requests", rows)
        except (sqlite3.IntegrityError, sqlite3.DataError) as exc:  # rolled back; for good
            raise RowsRefused(f"request log {self.path}: {exc}") from None
        except (sqlite3.Error, OSError, HousingError) as exc:
            self.close()
            raise LogUnavailable(f"request log {self.path}: {exc}") from None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def open_sink(location: str | Path | LogLocation) -> LogSink:
    """The sink for the configured log; connects lazily (on the first ``write``)."""
    location = parse_log_location(location)
    if location.kind == "postgresql":
        from housing_mlops.store.postgres import PgSink

        return PgSink(location)
    assert location.path is not None
    return SqliteSink(location.path)

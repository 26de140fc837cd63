"""Interim SQLite sink until the store's ``open_sink`` lands (replaced at the merge)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from housing_mlops.store.connection import open_log
from housing_mlops.store.rows import INSERT_SQLITE


class LogUnavailable(Exception):
    """The database cannot be reached now; the caller keeps the rows."""


class LogSink:
    def __init__(self, location: Any) -> None:
        self.location = location
        self._conn: sqlite3.Connection | None = None

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            if self._conn is None:
                self._conn = open_log(self.location, create=True)
            with self._conn:
                self._conn.executemany(INSERT_SQLITE, rows)
        except sqlite3.OperationalError as exc:
            self.close()
            raise LogUnavailable(str(exc)) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def open_sink(location: Any) -> LogSink:
    open_log(location, create=True).close()
    return LogSink(location)

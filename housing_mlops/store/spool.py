"""The request-log spool: rows that could not reach the database wait in a local file.

When the request log's database is unreachable (PostgreSQL down or restarting), the
``RequestLogWriter`` appends its rows here instead, in order, and replays them from the
oldest once the database answers again. One spool per writer process: a SQLite file
``<spool_dir>/<instance>-<pid>-<token>.db`` with one table ``spool`` (``seq`` gives the
order; one column per ``ROW_COLUMNS`` name, untyped so every value comes back exactly as
written), and beside it a ``.lock`` file the owner holds an exclusive ``flock`` on for as
long as it lives.

A process that ends with rows still spooled (SIGTERM during an outage, kill -9, a crash)
leaves both files behind, and its lock dies with it. Any writer sharing the folder then
adopts the orphan (``adopt_orphans``: at start and now and then while running): it takes
the dead owner's lock, copies the rows into its own spool in their order and deletes the
orphan, so the rows are replayed by whoever runs next. Rows carry the instance name of the
replica that answered them, whoever replays them.

Durability: every append is one transaction with ``synchronous=FULL``: a row in the spool
survives the process being killed and the machine losing power. Replay is at least once:
a crash between the database's commit and the deletion from the spool (a few
milliseconds per batch) replays that batch again at the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from housing_mlops.errors import ConfigError
from housing_mlops.store.rows import ROW_COLUMNS, insert_rows, quoted

_log = logging.getLogger(__name__)

SUFFIX = ".db"
LOCK_SUFFIX = ".lock"
# Rows copied per statement when adopting an orphan (bounded memory for a big spool).
_ADOPT_CHUNK = 20_000


def _safe(name: str) -> str:
    """A file-name-safe form of an instance name (``host:1234`` -> ``host_1234``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "instance"


class Spool:
    """One writer's spool file (see the module docstring). Not thread-safe: one thread uses it."""

    def __init__(self, directory: Path | str, instance: str) -> None:
        self.directory = Path(directory)
        stem = f"{_safe(instance)}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = self.directory / f"{stem}{SUFFIX}"
        self.lock_path = self.directory / f"{stem}{LOCK_SUFFIX}"
        self._lock: IO[bytes] | None = None
        self._conn: sqlite3.Connection | None = None
        self.rows = 0  # rows in the file now
        self._unopenable: set[Path] = set()  # lock files of orphans warned about

    # ----------------------------------------------------------------- lifecycle
    def open(self) -> None:
        """Create the folder, take this spool's lock and create its file.

        ConfigError when the folder cannot be written (checked at start-up, not during an
        outage)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = self.lock_path.open("wb")
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._lock = lock
            self._conn = _connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConfigError(
                f"cannot create the request-log spool in {self.directory}: {exc} "
                "(check serve.spool_dir)"
            ) from None

    def close(self) -> None:
        """Close the file; an empty spool is deleted, one with rows stays for replay."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            if self.rows == 0:
                _unlink_spool(self.path)
        lock, self._lock = self._lock, None
        if lock is not None:
            if self.rows == 0:
                with contextlib.suppress(OSError):
                    self.lock_path.unlink()
            lock.close()  # releases the flock

    # -------------------------------------------------------------------- rows
    def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Append rows (``ROW_COLUMNS`` order) in one transaction."""
        if not rows:
            return
        conn = self._connection()
        with conn:
            insert_rows(conn, "spool", rows)
        self.rows += len(rows)

    def head(self, limit: int) -> tuple[int, list[tuple[Any, ...]]]:
        """The oldest ``limit`` rows and the ``seq`` of the last one (0 when empty)."""
        cur = self._connection().execute(
            f"SELECT seq, {quoted(ROW_COLUMNS)} FROM spool ORDER BY seq LIMIT ?",  # noqa: S608
            (limit,),
        )
        found = cur.fetchall()
        if not found:
            return 0, []
        return int(found[-1][0]), [tuple(r[1:]) for r in found]

    def remove_through(self, seq: int, count: int) -> None:
        """Forget the rows up to ``seq`` (replayed: ``count`` of them)."""
        conn = self._connection()
        with conn:
            conn.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
        self.rows = max(0, self.rows - count)

    def remove_oldest(self, count: int) -> None:
        """Forget the oldest ``count`` rows (written before a replay was interrupted)."""
        if count <= 0:
            return
        conn = self._connection()
        with conn:
            conn.execute(
                "DELETE FROM spool WHERE seq IN (SELECT seq FROM spool ORDER BY seq LIMIT ?)",
                (count,),
            )
        self.rows = max(0, self.rows - count)

    # ----------------------------------------------------------------- orphans
    def adopt_orphans(self) -> int:
        """Move the rows of spools whose owner has ended into this one; returns how many.

        An orphan whose lock is held belongs to a live writer and is left alone. One that
        cannot be read is left in place (logged), never deleted."""
        adopted = 0
        for lock_path in sorted(self.directory.glob(f"*{LOCK_SUFFIX}")):
            if lock_path == self.lock_path:
                continue
            path = lock_path.with_suffix(SUFFIX)
            try:
                lock = lock_path.open("rb")
            except FileNotFoundError:
                continue  # adopted and deleted by another writer just now
            except OSError as exc:
                self._cannot_open(lock_path, exc)
                continue
            try:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its owner is alive
                if not lock_path.exists():
                    continue  # adopted by another writer between our open and flock
                try:
                    moved = self._copy_from(path) if path.exists() else 0
                except sqlite3.Error as exc:
                    _log.error("request-log spool: cannot read the orphan %s: %s", path, exc)
                    continue
                _unlink_spool(path)
                with contextlib.suppress(OSError):
                    lock_path.unlink()
                if moved:
                    _log.warning(
                        "request-log spool: adopted %d row(s) left by an ended writer in %s",
                        moved,
                        path,
                    )
                adopted += moved
            finally:
                lock.close()
        return adopted

    def _cannot_open(self, lock_path: Path, exc: OSError) -> None:
        """One warning per lock file (the folder is looked at every 30 s): its spool's
        rows stay where they are, unreplayed, until someone fixes what it says."""
        if lock_path in self._unopenable:
            return
        self._unopenable.add(lock_path)
        _log.warning(
            "request-log spool: cannot open the lock file %s to adopt its spool (%s); "
            "its rows stay unreplayed until it can be opened (check its owner and mode)",
            lock_path,
            exc.strerror or exc,
        )

    def _copy_from(self, path: Path) -> int:
        """Copy every row of another spool file into this one, in order, in one transaction."""
        # Read-write on purpose: a writer killed mid-transaction leaves a WAL file that
        # SQLite must recover (we hold the dead owner's lock, so nobody else writes it).
        other = sqlite3.connect(path, timeout=5.0)
        conn = self._connection()
        moved = 0
        try:
            names = [r[1] for r in other.execute("PRAGMA table_info(spool)")]
            if not names:
                return 0
            # By column name: a spool written by another release may lack a newer column.
            present = [c for c in ROW_COLUMNS if c in names]
            select = f"SELECT {quoted(present)} FROM spool ORDER BY seq"  # noqa: S608
            index = {c: i for i, c in enumerate(present)}
            with conn:
                cur = other.execute(select)
                while chunk := cur.fetchmany(_ADOPT_CHUNK):
                    insert_rows(
                        conn,
                        "spool",
                        [
                            tuple(row[index[c]] if c in index else None for c in ROW_COLUMNS)
                            for row in chunk
                        ],
                    )
                    moved += len(chunk)
        finally:
            other.close()
        self.rows += moved
        return moved

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the spool is not open")
        return self._conn


def _connect(path: Path) -> sqlite3.Connection:
    # check_same_thread=False: opened by start(), then used only by the writer thread.
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=FULL")
    with conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY, {quoted(ROW_COLUMNS)})"
        )
        # A spool file kept from an older release lacks the newer columns (untyped, NULL).
        present = {r[1] for r in conn.execute("PRAGMA table_info(spool)")}
        for column in ROW_COLUMNS:
            if column not in present:
                conn.execute(f'ALTER TABLE spool ADD COLUMN "{column}"')
    return conn


def _unlink_spool(path: Path) -> None:
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):
            leftover.unlink()


def check_spool_dir(directory: Path | str) -> None:
    """At start-up: can a spool be made in ``directory``? ConfigError if not."""
    spool = Spool(directory, "check")
    spool.open()
    spool.close()

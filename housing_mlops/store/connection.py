"""Opening the request-log database: one opener for writing, one read-only.

Every opener takes the configured location: a SQLite path, a ``postgresql://`` URL or a
``LogLocation`` (``store.location``). A URL goes to ``store.postgres`` and gives a
``PgConnection`` the readers accept like a ``sqlite3.Connection``; a database that cannot
be reached is a ConfigError naming the redacted URL (exit 3), within a bounded time.

===========================  ===============================================================
``open_log(path, create=)``  read-write, WAL, every table and index in place. ``create=True``
                             makes the file (and its folder) when missing: the service.
                             ``create=False`` returns None then: drift never creates a log.
``open_readonly(path)``      read-only (``mode=ro``), never creates or changes anything;
                             None when the file is missing: the report, ``/metrics``.
``create_log(path)``         ``open_log(path, create=True)`` and close: at start-up, so an
                             unusable path fails with ConfigError before serving.
``check_request_log(path)``  is the path a request log? (header and schema page only)
===========================  ===============================================================

Every way in checks the path first, so a path that holds something else (a CSV, a
directory, random bytes) gives the same DataError everywhere instead of sqlite3's "file is
not a database" as an unexpected error, or a directory read as "no log yet". Such a file
is never written to: SQLite would otherwise leave -wal/-shm files beside it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias, overload

from housing_mlops.errors import ConfigError, DataError, UnusableLogError
from housing_mlops.store.location import LogLocation, parse_log_location
from housing_mlops.store.schema import SchemaTooNew, create_tables

if TYPE_CHECKING:
    from housing_mlops.store.postgres import PgConnection

#: What the openers return and the readers take.
LogConnection: TypeAlias = "sqlite3.Connection | PgConnection"
Where: TypeAlias = "Path | str | LogLocation"

#: The smallest SQLite database: one page of the smallest page size.
MIN_DATABASE_BYTES = 512
#: The service's own queries of a PostgreSQL log (``/metrics``' drift gauges, ``POST
#: /feedback``) open bounded sessions (``statement_timeout_ms``): the server gives up
#: waiting for a locked table after 2 s (``postgres.LOCK_TIMEOUT_MS``) and cancels a
#: statement after this long, and the client cuts a connection that still has not
#: answered 5 s later. A request then gets its answer (a 503, gauges left out) within
#: seconds, and a stop never waits for the database.
SERVICE_STATEMENT_TIMEOUT_MS = 5_000


def _not_a_log(path: Path | LogLocation, what: str) -> UnusableLogError:
    return UnusableLogError(
        f"the request log {path} {what}: move it away, or point serve.request_log, "
        "HOUSING_REQUEST_LOG or --request-log at a SQLite file (`housing serve` creates "
        "one where none is)"
    )


def _existing_log(path: Path) -> bool:
    """True when ``path`` holds a SQLite file, False when nothing is there; else DataError.

    An empty file counts (SQLite makes it a database). The header is read by SQLite, never
    with an open() and close() of our own: closing any descriptor of the file drops every
    POSIX lock this process holds on it, those of its open SQLite connections included (a
    service's writer), and the next connection of another process to close (``housing
    drift``, ``housing feedback``) would take itself for the last one and delete the -wal
    and -shm files under them: every later read of the service failing with "disk I/O
    error" and its new rows unseen by other readers. SQLite's own opens and closes keep
    the locks of the process's other connections.
    """
    if not path.exists():
        return False
    if path.is_dir():
        raise _not_a_log(path, "is a directory, not a SQLite database")
    if not path.is_file():
        raise _not_a_log(path, "is not a regular file, so not a SQLite database")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read the request log {path}: {exc.strerror or exc}") from None
    if size == 0:
        return True
    if size < MIN_DATABASE_BYTES:  # SQLite would read a few bytes as an empty database
        raise _not_a_log(path, "is not a SQLite database")
    try:
        probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise DataError(f"cannot read the request log {path}: {exc}") from None
    try:
        probe.execute("PRAGMA schema_version").fetchone()
        names = [r[0] for r in probe.execute(_TABLES).fetchall()]
    except sqlite3.OperationalError:
        names = []  # locked or not openable now: a database all the same; the opener says why
    except sqlite3.DatabaseError:  # SQLITE_NOTADB: no SQLite header
        raise _not_a_log(path, "is not a SQLite database") from None
    finally:
        probe.close()
    if names and "requests" not in names:
        # Another application's database (mlruns/mlflow.db given as --request-log): the
        # writers would add the log's tables to it, the readers call it a log without
        # traffic. Every request log has `requests` from its first open for writing.
        shown = ", ".join(sorted(names)[:5]) + (", …" if len(names) > 5 else "")
        raise DataError(
            f"the request log {path} is a SQLite database of something else (tables {shown}), "
            "not a request log: point serve.request_log, HOUSING_REQUEST_LOG or "
            "--request-log at the request log (data/requests.db by default)"
        )
    return True


_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"


@contextlib.contextmanager
def damaged_log_errors(where: Where) -> Iterator[None]:
    """A damaged SQLite log met past its first page ("database disk image is malformed"):
    the DataError (exit 4) the openers give for a file that is not a usable log, instead of
    sqlite3's DatabaseError as an unexpected error. Locks and other errors pass through."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise
        raise _not_a_log(
            parse_log_location(where), f"is not a usable SQLite database ({exc})"
        ) from None


def _verified(conn: sqlite3.Connection, path: Path, statements: tuple[str, ...]) -> None:
    """Run the first statements on a new connection; a damaged database is a DataError.

    OperationalError (locked, unable to open, read-only) is left to the caller: it says
    nothing about what the file is. The connection is closed on any failure.
    """
    try:
        for statement in statements:
            conn.execute(statement).fetchall()
    except sqlite3.OperationalError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:  # SQLITE_NOTADB, SQLITE_CORRUPT
        conn.close()
        raise _not_a_log(path, f"is not a usable SQLite database ({exc})") from None


def _open_pg(
    location: LogLocation, *, create: bool, statement_timeout_ms: int | None = None
) -> PgConnection | None:
    from housing_mlops.store import postgres

    conn = postgres.connect(location, statement_timeout_ms=statement_timeout_ms)
    try:
        if not create and "requests" not in conn.tables():
            conn.close()
            return None
        postgres.create_schema(conn)
    except postgres.DatabaseError as exc:  # a bounded session cut or cancelled
        conn.close()
        raise postgres.database_error(location, exc, "opening the log") from None
    except BaseException:
        conn.close()
        raise
    return conn


# A Path is always a SQLite file; a str or LogLocation may name either backend.
@overload
def open_log(
    path: Path, *, create: Literal[True], statement_timeout_ms: int | None = None
) -> sqlite3.Connection: ...
@overload
def open_log(  # type: ignore[overload-overlap]
    path: Path, *, create: bool, statement_timeout_ms: int | None = None
) -> sqlite3.Connection | None: ...
@overload
def open_log(
    path: Where, *, create: Literal[True], statement_timeout_ms: int | None = None
) -> LogConnection: ...
@overload
def open_log(
    path: Where, *, create: bool, statement_timeout_ms: int | None = None
) -> LogConnection | None: ...
def open_log(
    path: Where, *, create: bool, statement_timeout_ms: int | None = None
) -> LogConnection | None:
    """Open the log for writing: WAL mode, every table and index in place.

    ``create=True`` creates the file and its folder when missing; ``create=False``
    returns None instead. Raises DataError when the path holds something that is not a
    SQLite database, sqlite3.OperationalError when it cannot be opened for writing.
    A PostgreSQL log: the schema is created or migrated; ``create=False`` returns None
    when the database has no request table yet; ConfigError when it cannot be reached,
    or (``statement_timeout_ms``: a bounded session, see ``postgres.connect``) does not
    answer in time. SQLite's own lock timeout bounds a SQLite log.
    """
    location = parse_log_location(path)
    if location.kind == "postgresql":
        return _open_pg(location, create=create, statement_timeout_ms=statement_timeout_ms)
    assert location.path is not None
    path = location.path
    if not _existing_log(path):
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0)
    _verified(conn, path, ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"))
    try:
        with damaged_log_errors(path):
            create_tables(conn)
    except SchemaTooNew as exc:
        conn.close()
        raise ConfigError(
            f"the request log {path} has schema version {exc.version}, newer than this "
            "release's: upgrade housing-mlops"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def create_log(path: Where) -> None:
    """Create the log (folder, file, tables) when missing, and check it can be written.

    Raises DataError when the path holds something else, ConfigError when the log cannot
    be opened for writing (a read-only folder, a locked database, ...). A PostgreSQL log:
    the schema is created or migrated (safe when replicas start at once); ConfigError
    within a few seconds when the server is unreachable, the credentials are wrong or
    the database does not exist.
    """
    location = parse_log_location(path)
    try:
        open_log(location, create=True).close()
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"cannot open the request log {location}: {exc} (check serve.request_log)"
        ) from None


def open_readonly(path: Where, *, statement_timeout_ms: int | None = None) -> LogConnection | None:
    """Open an existing log read-only (never creates or changes it); None when missing.

    Tables may be missing (a log nothing was written to yet): readers treat them as empty.
    A PostgreSQL log is never None (the database exists or connecting is a ConfigError);
    its session is read-only, and bounded with ``statement_timeout_ms`` (see
    ``postgres.connect``).
    """
    location = parse_log_location(path)
    if location.kind == "postgresql":
        from housing_mlops.store import postgres

        return postgres.connect(location, read_only=True, statement_timeout_ms=statement_timeout_ms)
    assert location.path is not None
    path = location.path
    if not _existing_log(path):
        return None
    # A URI, for mode=ro: the path percent-encoded, or a '#' or '?' in it would end the path.
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    _verified(conn, path, ("SELECT count(*) FROM sqlite_master",))
    return conn


def check_request_log(path: Where) -> bool:
    """True when ``path`` is a readable request log, False when it does not exist.

    Raises DataError when something else is there (a text file, a directory, a damaged
    database). Cheap: the file header and the schema page; never creates or writes. A
    database that cannot be opened right now (locked, a WAL file in a read-only folder)
    passes: it is a request log, and the reader that needs it reports its own error.
    A PostgreSQL log: connects (ConfigError when it cannot) and says whether the request
    table exists.
    """
    location = parse_log_location(path)
    if location.kind == "postgresql":
        from housing_mlops.store import postgres

        pg = postgres.connect(location, read_only=True)
        try:
            return "requests" in pg.tables()
        finally:
            pg.close()
    try:
        conn = open_readonly(path)
    except sqlite3.OperationalError:
        return True
    if conn is None:
        return False
    conn.close()
    return True


def tables(conn: LogConnection) -> set[str]:
    """The names of the tables in the database (readers treat a missing one as empty)."""
    if not isinstance(conn, sqlite3.Connection):
        return conn.tables()
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def database_errors(conn: LogConnection) -> tuple[type[Exception], ...]:
    """What a failure of ``conn``'s database raises: sqlite3's or psycopg's errors (a
    bounded session's timeout included), or OSError."""
    if isinstance(conn, sqlite3.Connection):
        return (sqlite3.Error, OSError)
    from housing_mlops.store.postgres import DatabaseError

    return (DatabaseError, OSError)

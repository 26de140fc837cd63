"""The request log: the only module that touches its SQLite database (through sqlite-utils).

Table ``requests`` (one row per answered or rejected prediction row):

=============  =======  ==========================================================
column         type     meaning
=============  =======  ==========================================================
id             INTEGER  primary key
ts             REAL     UTC time of the request, Unix epoch seconds (indexed)
request_id     TEXT     the id returned to the client (shared by a batch's rows)
row_index      INTEGER  position of the row in a batch (0 for a single object)
model_name     TEXT     registered model name
model_version  TEXT     registered model version that answered (NULL if rejected)
MedInc ...     REAL     the 8 raw input features (NULL when rejected)
prediction     REAL     prediction in $100k (NULL when rejected)
latency_ms     REAL     server-side latency of the whole request
status         INTEGER  HTTP status (200, 413, 415, 422, ...)
error          TEXT     validation error summary for rejected requests
=============  =======  ==========================================================

WAL mode; an index on ``ts`` (and on ``model_version, ts``) keeps window queries fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FEATURE_COLUMNS = [
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
]

REQUEST_COLUMNS: dict[str, type] = {
    "id": int,
    "ts": float,
    "request_id": str,
    "row_index": int,
    "model_name": str,
    "model_version": str,
    **{name: float for name in FEATURE_COLUMNS},
    "prediction": float,
    "latency_ms": float,
    "status": int,
    "error": str,
}


def open_db(path: Path | str) -> Any:
    """Open (creating if needed) the request log with the schema in place; WAL mode."""
    import sqlite_utils

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    ensure_schema(db)
    return db


def ensure_schema(db: Any) -> None:
    """Create the ``requests`` table and its indexes if they are missing."""
    table = db["requests"]
    if not table.exists():
        table.create(REQUEST_COLUMNS, pk="id", not_null={"ts", "request_id", "status"})
    table.create_index(["ts"], if_not_exists=True)
    table.create_index(["model_version", "ts"], if_not_exists=True)


def insert_requests(db: Any, rows: list[dict[str, Any]]) -> int:
    """Insert request rows in one transaction; returns how many were written."""
    if not rows:
        return 0
    with db.conn:
        db["requests"].insert_all(rows, batch_size=1000)
    return len(rows)

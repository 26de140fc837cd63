"""The tables of the request-log database, and the one function that creates them.

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
instance       TEXT     the replica that answered (``serve.instance``, or host:pid)
role           TEXT     ``champion`` or ``challenger``: the model whose answer the client
                        got (NULL when rejected, and in rows written before version 3)
shadow_version TEXT     the challenger version that scored the row in shadow (else NULL)
shadow_prediction REAL  the challenger's prediction in shadow, in $100k (else NULL)
=============  =======  ==========================================================

``model_version`` and ``prediction`` are always those of the answer the client got; with a
challenger in shadow its prediction of the same row sits beside them.

Table ``feedback`` (ground truth: one true value per logged prediction row, at most one):

=============  =======  ==========================================================
id             INTEGER  primary key
request_id     TEXT     the logged request's id
row_index      INTEGER  the row of that request (0 for a single house)
actual         REAL     the true value, in $100k (finite)
received_at    REAL     UTC Unix time the label was stored
source         TEXT     where it came from (``api`` for POST /feedback, else a file name)
=============  =======  ==========================================================

A unique index on ``(request_id, row_index)`` refuses a second label for the same row, and
``requests(request_id)`` is indexed so labels join their requests without a scan.

Indexes on ``ts``, ``(model_version, ts)`` and ``(status, model_version, ts)`` keep window
queries fast (the last one covers drift's count of answered rows per version).

Drift history (every judged drift check, so the service's gauges and the report can show
the latest result and the history): ``drift_runs`` (one row per check: window, model
version, counts, dataset verdict), ``drift_scores`` (one row per judged column of a run:
every score, the verdict and a coarse reference-vs-current histogram as JSON) and
``drift_references`` (the cached training profile of each model version seen).

Every statement is ``IF NOT EXISTS`` and the index names are those sqlite-utils gave them
in logs written by earlier releases, so opening an old log adds only what it lacks.
``schema_version`` records the version (``SCHEMA_VERSION``): 1 is the layout before
replicas, 2 added ``requests.instance``, 3 the challenger's columns (``role``,
``shadow_version``, ``shadow_prediction``) and ``feedback``; an older log gets what it lacks
with ``ALTER TABLE ... ADD COLUMN`` when opened for writing. The same tables, in
PostgreSQL's types, are created by ``store.postgres`` under an advisory lock.
"""

from __future__ import annotations

import sqlite3
import time

from housing_mlops.columns import FEATURES

REQUEST_COLUMNS: dict[str, str] = {
    "id": "INTEGER PRIMARY KEY",
    "ts": "REAL NOT NULL",
    "request_id": "TEXT NOT NULL",
    "row_index": "INTEGER",
    "model_name": "TEXT",
    "model_version": "TEXT",
    **{name: "REAL" for name in FEATURES},
    "prediction": "REAL",
    "latency_ms": "REAL",
    "status": "INTEGER NOT NULL",
    "error": "TEXT",
    "instance": "TEXT",
    "role": "TEXT",
    "shadow_version": "TEXT",
    "shadow_prediction": "REAL",
}

#: Columns added to ``requests`` after version 1, with the version that added them: an
#: older log gets them by ``ALTER TABLE ... ADD COLUMN`` when opened for writing.
ADDED_REQUEST_COLUMNS: dict[str, str] = {
    "instance": "TEXT",  # 2
    "role": "TEXT",  # 3
    "shadow_version": "TEXT",  # 3
    "shadow_prediction": "REAL",  # 3
}

FEEDBACK_COLUMNS: dict[str, str] = {
    "id": "INTEGER PRIMARY KEY",
    "request_id": "TEXT NOT NULL",
    "row_index": "INTEGER NOT NULL",
    "actual": "REAL NOT NULL",
    "received_at": "REAL NOT NULL",
    "source": "TEXT",
}

DRIFT_RUN_COLUMNS: dict[str, str] = {
    "id": "INTEGER PRIMARY KEY",
    "created_at": "REAL NOT NULL",
    "since_ts": "REAL",
    "until_ts": "REAL",
    "model_name": "TEXT",
    "model_version": "TEXT",
    "rows": "INTEGER",
    "sampled_rows": "INTEGER",
    "other_versions": "TEXT",
    "reference": "TEXT",
    "reference_rows": "INTEGER",
    "features": "INTEGER",
    "drifting": "INTEGER",
    "drift_share": "REAL",
    "dataset_drift": "INTEGER",
    "any_drift": "INTEGER",
    "verdict": "TEXT",
    "drifting_features": "TEXT",
    "thresholds": "TEXT",
}

DRIFT_SCORE_COLUMNS: dict[str, str] = {
    "id": "INTEGER PRIMARY KEY",
    "run_id": "INTEGER NOT NULL REFERENCES drift_runs(id)",
    "feature": "TEXT NOT NULL",
    "kind": "TEXT",
    "rows": "INTEGER",
    "ref_mean": "REAL",
    "cur_mean": "REAL",
    "ref_std": "REAL",
    "cur_std": "REAL",
    "psi": "REAL",
    "ks": "REAL",
    "ks_pvalue": "REAL",
    "wasserstein": "REAL",
    "wasserstein_norm": "REAL",
    "verdict": "TEXT",
    "note": "TEXT",
    "hist": "TEXT",
}


DRIFT_REFERENCE_COLUMNS: dict[str, str] = {
    "key": "TEXT PRIMARY KEY",
    "tracking_uri": "TEXT",
    "model_name": "TEXT",
    "model_version": "TEXT",
    "run_id": "TEXT",
    "cached_at": "REAL",
    "profile": "TEXT",
}

#: The layout this release writes (see the module docstring for what each version added).
SCHEMA_VERSION = 3


class SchemaTooNew(Exception):
    """The log was written by a newer release (its schema_version is higher than ours)."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


def _table(name: str, columns: dict[str, str]) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {name} ("
        + ", ".join(f'"{column}" {kind}' for column, kind in columns.items())
        + ")"
    )


# Shared by both backends (PostgreSQL knows the same CREATE INDEX IF NOT EXISTS).
INDEXES: tuple[str, ...] = (
    "CREATE INDEX IF NOT EXISTS idx_requests_ts ON requests(ts)",
    "CREATE INDEX IF NOT EXISTS idx_requests_model_version_ts ON requests(model_version, ts)",
    # Lets SQLite count a window's answered rows per version from the index alone (0.3 s
    # instead of 1-3 s over a million rows); building it on an old log of that size takes
    # a few seconds, once.
    "CREATE INDEX IF NOT EXISTS idx_requests_status_model_version_ts "
    "ON requests(status, model_version, ts)",
    "CREATE INDEX IF NOT EXISTS idx_requests_request_id ON requests(request_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_feedback_request_row ON feedback(request_id, row_index)",
    "CREATE INDEX IF NOT EXISTS idx_drift_runs_created_at ON drift_runs(created_at)",
    "CREATE INDEX IF NOT EXISTS idx_drift_scores_run_id ON drift_scores(run_id)",
)

TABLES: tuple[str, ...] = (
    _table("requests", REQUEST_COLUMNS),
    _table("drift_runs", DRIFT_RUN_COLUMNS),
    _table("drift_scores", DRIFT_SCORE_COLUMNS),
    _table("drift_references", DRIFT_REFERENCE_COLUMNS),
    _table("feedback", FEEDBACK_COLUMNS),
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)",
)


def create_tables(conn: sqlite3.Connection) -> None:
    """Create every table and index that is missing and migrate an older log, at once.

    ``BEGIN IMMEDIATE`` takes the write lock first, so two processes opening an old log
    at the same moment do not both add the same column.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in TABLES:
            conn.execute(statement)
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        version = int(current.fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(version)
        columns = {r[1] for r in conn.execute("PRAGMA table_info(requests)").fetchall()}
        for column, kind in ADDED_REQUEST_COLUMNS.items():
            if column not in columns:
                conn.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
        for statement in INDEXES:
            conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(
                "INSERT OR IGNORE INTO schema_version (version, applied_at) VALUES (?, ?)",
                [SCHEMA_VERSION, time.time()],
            )
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


# The sampling predicate keeps a row when a multiplicative hash of its id falls below a
# threshold: a deterministic Bernoulli(fraction) sample that does not depend on feature
# values, so a window gives the same numbers every time. SQLite evaluates it on index
# entries (the id is in every index), so skipped rows are never read from the table;
# PostgreSQL has an index on the expression itself (``store.postgres``). Both backends
# give the same sample of the same ids, so the same rows give the same drift verdict.
HASH_MOD = 1_000_003
HASH_MUL = 618_034  # ~ 0.618 * HASH_MOD (golden-ratio multiplicative hashing)
SAMPLE_HASH = f"((id % {HASH_MOD}) * {HASH_MUL}) % {HASH_MOD}"

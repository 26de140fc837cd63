"""The request log's readers: a time window for drift, the traffic summary for the report.

``window_counts`` and ``window_sample`` read a time window for drift; ``serving_stats``
summarises the traffic for the report. The row itself is ``store.rows.LoggedRequest``,
written by ``store.writer.RequestLogWriter``.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import date, timedelta
from typing import Any

from housing_mlops.store.connection import LogConnection, tables
from housing_mlops.store.schema import HASH_MOD, REQUEST_COLUMNS, SAMPLE_HASH

# ------------------------------------------------------------------------ readers


def _sample_clause(fraction: float) -> tuple[str, list[Any]]:
    if fraction >= 1.0:
        return "1 = 1", []
    threshold = max(1, math.ceil(fraction * HASH_MOD))
    return f"{SAMPLE_HASH} < ?", [threshold]


def _is_sqlite(conn: LogConnection) -> bool:
    return isinstance(conn, sqlite3.Connection)


def _utc_day(day: str | float) -> str:
    """SQLite's date(ts, 'unixepoch') as is; PostgreSQL's day number as that same text."""
    if isinstance(day, str):
        return day
    return (date(1970, 1, 1) + timedelta(days=int(day))).isoformat()


def _columns(conn: LogConnection, table: str) -> set[str]:
    if isinstance(conn, sqlite3.Connection):
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ?",
        [table],
    ).fetchall()
    return {r[0] for r in rows}


def _window_clause(
    since_ts: float, until_ts: float, model_version: str | None
) -> tuple[str, list[Any]]:
    clause = "ts >= ? AND ts < ? AND status = 200"
    params: list[Any] = [float(since_ts), float(until_ts)]
    if model_version is not None:
        clause += " AND model_version = ?"
        params.append(str(model_version))
    return clause, params


def answered_clause(
    since_ts: float | None, until_ts: float | None, prefix: str = ""
) -> tuple[str, list[Any]]:
    """``status = 200`` and an optional ``[since_ts, until_ts)`` on ``ts`` (``prefix``: a
    table alias such as ``"r."``): the answered rows of an open or closed window."""
    clause = f"{prefix}status = 200"
    params: list[Any] = []
    if since_ts is not None:
        clause += f" AND {prefix}ts >= ?"
        params.append(float(since_ts))
    if until_ts is not None:
        clause += f" AND {prefix}ts < ?"
        params.append(float(until_ts))
    return clause, params


def _fetch_array(cursor: Any, width: int, chunk_rows: int = 20_000) -> Any:
    """All rows of a cursor as a float64 (n, width) array, fetched in chunks (None -> NaN)."""
    import numpy as np

    blocks = []
    while True:
        rows = cursor.fetchmany(chunk_rows)
        if not rows:
            break
        blocks.append(np.array(rows, dtype=float).reshape(len(rows), width))
    return np.concatenate(blocks) if blocks else np.empty((0, width))


def window_counts(
    conn: LogConnection, since_ts: float, until_ts: float, model_version: str | None = None
) -> list[dict[str, Any]]:
    """Answered (status 200) rows per model version in [since, until), most rows first."""
    if "requests" not in tables(conn):
        return []
    clause, params = _window_clause(since_ts, until_ts, model_version)
    # Only our own fixed clause is interpolated; values go in as parameters. Grouping by
    # version alone keeps the query inside the covering index; the model name (one per
    # version) is looked up for each version found.
    select = "SELECT model_version, COUNT(*) AS n, MIN(ts), MAX(ts) FROM requests"
    sql = f"{select} WHERE {clause} GROUP BY model_version ORDER BY n DESC"  # noqa: S608
    out = []
    for version, n, first, last in conn.execute(sql, params).fetchall():
        # "= ?" or "IS NULL" rather than SQLite's "IS ?": both backends know it and both
        # can use the (model_version, ts) index for it.
        same, args = ("= ?", [version]) if version is not None else ("IS NULL", [])
        name = conn.execute(
            "SELECT model_name FROM requests WHERE status = 200 "  # noqa: S608 - fixed words
            f"AND model_version {same} AND ts >= ? AND ts < ? LIMIT 1",
            [*args, first, last + 1e-6],
        ).fetchone()
        out.append(
            {
                "model_name": name[0] if name else None,
                "model_version": version,
                "rows": n,
                "first_ts": first,
                "last_ts": last,
            }
        )
    return out


def window_sample(
    conn: LogConnection,
    since_ts: float,
    until_ts: float,
    model_version: str | None,
    columns: list[str],
    fraction: float = 1.0,
) -> dict[str, Any]:
    """The window's answered rows (a deterministic uniform sample when fraction < 1).

    Returns {column: float64 numpy array}. Rows are fetched in chunks into arrays, so
    memory stays at a few bytes per sampled value.
    """
    unknown = [c for c in columns if c not in REQUEST_COLUMNS]
    if unknown:
        raise ValueError(f"unknown request-log columns: {unknown}")
    clause, params = _window_clause(since_ts, until_ts, model_version)
    sample, sample_params = _sample_clause(fraction)
    select = ", ".join(f'"{c}"' for c in columns)
    # In id order on both backends: the same rows give the same arrays, bit for bit, so
    # drift over PostgreSQL and over SQLite agrees exactly (sorting a sample is cheap).
    sql = f"SELECT {select} FROM requests WHERE {clause} AND {sample} ORDER BY id"  # noqa: S608
    data = _fetch_array(conn.execute(sql, [*params, *sample_params]), len(columns))
    return {c: data[:, i].copy() for i, c in enumerate(columns)}


def serving_stats(conn: LogConnection | None, sample_rows: int = 200_000) -> dict[str, Any]:
    """Traffic summary for the report: per-day counts, error rate, latency and predictions.

    Counts are exact (SQL). Latency percentiles are per *request*: every row of a batch
    carries the latency of the whole request, so only each request's first row
    (``row_index`` 0) is read and a batch of 1,000 rows counts once, not 1,000 times.
    They come from a uniform sample of at most ``sample_rows`` requests, the prediction
    distribution from one of at most ``sample_rows`` rows (the same hash sampling as
    drift). ``largest_batch`` is the most rows a logged request had; ``by_instance`` the
    rows each replica answered (rows logged before replicas were named are left out).
    """
    import numpy as np

    empty: dict[str, Any] = {
        "rows": 0,
        "requests": 0,
        "error_rows": 0,
        "error_rate": None,
        "first_ts": None,
        "last_ts": None,
        "per_day": [],
        "latency_ms": {},
        "largest_batch": 0,
        "predictions": np.empty(0),
        "by_version": [],
        "by_instance": [],
    }
    if conn is None or "requests" not in tables(conn):
        return empty
    summary = conn.execute(
        # CASE rather than SUM(condition): PostgreSQL does not sum booleans.
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status <> 200 THEN 1 ELSE 0 END), 0), "
        "MIN(ts), MAX(ts), COUNT(DISTINCT request_id), "
        "COALESCE(SUM(CASE WHEN COALESCE(row_index, 0) = 0 THEN 1 ELSE 0 END), 0), "
        "COALESCE(MAX(row_index), 0) FROM requests"
    ).fetchone()
    assert summary is not None  # an aggregate always gives one row
    total, errors, first, last, requests, heads, last_index = summary
    stats = {
        **empty,
        "rows": int(total),
        "requests": int(requests),
        "error_rows": int(errors),
        "error_rate": (errors / total) if total else None,
        "first_ts": first,
        "last_ts": last,
        "largest_batch": int(last_index) + 1 if total else 0,
    }
    if not total:
        return stats
    # PostgreSQL groups on the UTC day number and the date is written here: formatting a
    # timestamp per row in SQL (to_char) cost it a second per million rows.
    day = "date(ts, 'unixepoch')" if _is_sqlite(conn) else "FLOOR(ts / 86400)"
    stats["per_day"] = [
        {"day": _utc_day(r[0]), "rows": int(r[1]), "errors": int(r[2]), "requests": int(r[3])}
        for r in conn.execute(
            f"SELECT {day} AS day, COUNT(*), "  # noqa: S608 - fixed expressions
            "SUM(CASE WHEN status <> 200 THEN 1 ELSE 0 END), "
            "COUNT(DISTINCT request_id) FROM requests GROUP BY day ORDER BY day"
        ).fetchall()
    ]
    stats["by_version"] = [
        {"model_version": r[0], "rows": int(r[1])}
        for r in conn.execute(
            "SELECT model_version, COUNT(*) FROM requests WHERE status = 200 "
            "GROUP BY model_version ORDER BY model_version"
        ).fetchall()
    ]
    if "instance" in _columns(conn, "requests"):  # a log from before replicas has none
        stats["by_instance"] = [
            {"instance": r[0], "rows": int(r[1])}
            for r in conn.execute(
                "SELECT instance, COUNT(*) FROM requests WHERE instance IS NOT NULL "
                "GROUP BY instance ORDER BY instance"
            ).fetchall()
        ]
    clause, params = _sample_clause(min(1.0, sample_rows / max(heads, 1)))
    sql = (
        "SELECT latency_ms FROM requests "  # noqa: S608 - our own fixed clause
        f"WHERE COALESCE(row_index, 0) = 0 AND {clause}"
    )
    latency = _fetch_array(conn.execute(sql, params), 1)[:, 0]
    latency = latency[np.isfinite(latency)]
    if latency.size:
        p50, p95, p99 = np.percentile(latency, [50, 95, 99])
        stats["latency_ms"] = {
            "p50": float(p50),
            "p95": float(p95),
            "p99": float(p99),
            "mean": float(latency.mean()),
            "requests": int(latency.size),
        }
    clause, params = _sample_clause(min(1.0, sample_rows / total))
    sql = f"SELECT prediction, status FROM requests WHERE {clause}"  # noqa: S608
    data = _fetch_array(conn.execute(sql, params), 2)
    predictions = data[data[:, 1] == 200, 0]
    stats["predictions"] = predictions[np.isfinite(predictions)]
    return stats


# Rows logged before roles existed (schema 1 and 2) were all answered by the champion.
ROLE = "COALESCE(role, 'champion')"


def role_stats(
    conn: LogConnection | None,
    since_ts: float | None = None,
    until_ts: float | None = None,
    sample_rows: int = 200_000,
) -> dict[str, Any]:
    """Champion vs challenger for the report: traffic, latency and shadow divergence.

    ``versions``: one entry per (role, model version) that answered rows in
    ``[since_ts, until_ts)``, most rows first: ``rows`` (answered rows), ``requests``
    and the per-request latency p50/p99 (each request's first row only, as
    ``serving_stats``; a uniform sample of at most ``sample_rows`` requests per entry).
    ``shadow``: one entry per (answering version, shadow version) with the number of
    shadowed rows and the divergence ``|prediction - shadow_prediction|`` (exact mean,
    p95 over a sample of at most ``sample_rows`` rows). Rows logged before roles existed
    count as the champion's.
    """
    import numpy as np

    out: dict[str, Any] = {"versions": [], "shadow": []}
    if conn is None or "requests" not in tables(conn):
        return out
    # A log no release with roles has opened for writing yet has no role column (reading
    # never migrates it): all its rows are the champion's.
    columns = _columns(conn, "requests")
    role_of = ROLE if "role" in columns else "'champion'"
    clause, params = answered_clause(since_ts, until_ts)
    groups = conn.execute(
        f"SELECT {role_of} AS r, model_version, COUNT(*), "  # noqa: S608 - fixed expressions
        "COALESCE(SUM(CASE WHEN COALESCE(row_index, 0) = 0 THEN 1 ELSE 0 END), 0) "
        f"FROM requests WHERE {clause} GROUP BY r, model_version",
        params,
    ).fetchall()
    for role, version, rows, heads in sorted(groups, key=lambda g: (-g[2], g[0], str(g[1]))):
        sample, sample_params = _sample_clause(min(1.0, sample_rows / max(int(heads), 1)))
        same, args = ("= ?", [version]) if version is not None else ("IS NULL", [])
        latency = _fetch_array(
            conn.execute(
                "SELECT latency_ms FROM requests "  # noqa: S608 - fixed expressions
                f"WHERE {clause} AND {role_of} = ? AND model_version {same} "
                f"AND COALESCE(row_index, 0) = 0 AND {sample}",
                [*params, role, *args, *sample_params],
            ),
            1,
        )[:, 0]
        latency = latency[np.isfinite(latency)]
        entry: dict[str, Any] = {
            "role": role,
            "model_version": version,
            "rows": int(rows),
            "requests": int(heads),
            "latency_ms": {},
        }
        if latency.size:
            p50, p99 = np.percentile(latency, [50, 99])
            entry["latency_ms"] = {
                "p50": float(p50),
                "p99": float(p99),
                "requests": int(latency.size),
            }
        out["versions"].append(entry)

    if "shadow_prediction" not in columns:
        return out
    shadowed = f"{clause} AND shadow_prediction IS NOT NULL AND prediction IS NOT NULL"
    pairs = conn.execute(
        "SELECT model_version, shadow_version, COUNT(*), "  # noqa: S608 - fixed expressions
        "AVG(ABS(prediction - shadow_prediction)) "
        f"FROM requests WHERE {shadowed} GROUP BY model_version, shadow_version",
        params,
    ).fetchall()
    for version, shadow_version, rows, mean in sorted(
        pairs, key=lambda p: (-p[2], str(p[0]), str(p[1]))
    ):
        sample, sample_params = _sample_clause(min(1.0, sample_rows / max(int(rows), 1)))
        conditions = [
            f"{column} = ?" if value is not None else f"{column} IS NULL"
            for column, value in (("model_version", version), ("shadow_version", shadow_version))
        ]
        args = [v for v in (version, shadow_version) if v is not None]
        diffs = _fetch_array(
            conn.execute(
                "SELECT ABS(prediction - shadow_prediction) FROM requests "  # noqa: S608
                f"WHERE {shadowed} AND {' AND '.join(conditions)} AND {sample}",
                [*params, *args, *sample_params],
            ),
            1,
        )[:, 0]
        out["shadow"].append(
            {
                "model_version": version,
                "shadow_version": shadow_version,
                "rows": int(rows),
                "mean_abs_diff": float(mean),
                "p95_abs_diff": float(np.percentile(diffs, 95)) if diffs.size else None,
            }
        )
    return out

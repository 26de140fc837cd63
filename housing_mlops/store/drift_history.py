"""Drift history: judged drift checks, their per-column scores, cached reference profiles.

Every judged drift check is stored (``save_drift_run``) so the service's Prometheus gauges
and the report can show the latest result (``latest_drift_run``) and the history
(``drift_history``). The tables are described in ``store.schema``.

A registered model version never changes, so its training profile is fetched from MLflow
once and kept here (``cache_reference``): later drift checks on the same version skip
importing and querying MLflow (seconds). Keyed by tracking URI, model name and version;
the run id is kept for the record. Deleting a registered model and re-creating it under
the same name reuses version numbers: `housing drift --refresh-reference` fetches the
profile again.

Writers take a connection from ``open_log``; readers accept one from ``open_readonly``
too (or None: no log yet) and treat missing tables as an empty history.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

from housing_mlops.store.connection import database_errors, open_readonly, tables
from housing_mlops.store.location import parse_log_location
from housing_mlops.store.outage import LogUnavailable
from housing_mlops.store.schema import DRIFT_SCORE_COLUMNS

if TYPE_CHECKING:
    from housing_mlops.store.connection import LogConnection, Where

_JSON_RUN_FIELDS = ("other_versions", "drifting_features", "thresholds")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=float)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python; non-finite floats -> NULL."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_drift_run(conn: LogConnection, result: dict[str, Any]) -> int:
    """Store a judged drift check (drift.check_drift's result) and its scores; returns the id."""
    window = result.get("window", {})
    reference = result.get("reference", {})
    run = {
        "created_at": float(result.get("created_at") or time.time()),
        "since_ts": window.get("since_ts"),
        "until_ts": window.get("until_ts"),
        "model_name": result.get("model_name"),
        "model_version": result.get("model_version"),
        "rows": result.get("rows"),
        "sampled_rows": result.get("sampled_rows"),
        "other_versions": _dumps(result.get("other_versions") or {}),
        "reference": reference.get("source"),
        "reference_rows": reference.get("rows"),
        "features": result.get("features"),
        "drifting": len(result.get("drifting_features") or []),
        "drift_share": result.get("drift_share"),
        "dataset_drift": int(bool(result.get("dataset_drift"))),
        "any_drift": int(bool(result.get("any_drift"))),
        "verdict": result.get("verdict"),
        "drifting_features": _dumps(result.get("drifting_features") or []),
        "thresholds": _dumps(result.get("thresholds") or {}),
    }
    score_keys = [k for k in DRIFT_SCORE_COLUMNS if k not in ("id", "run_id")]
    with conn:
        # RETURNING (SQLite >= 3.35 and PostgreSQL): no lastrowid in PostgreSQL.
        names = ", ".join(f'"{k}"' for k in run)
        cursor = conn.execute(
            f"INSERT INTO drift_runs ({names}) "  # noqa: S608 - fixed column names
            f"VALUES ({', '.join('?' * len(run))}) RETURNING id",
            [_plain(v) for v in run.values()],
        )
        inserted = cursor.fetchone()
        assert inserted is not None  # RETURNING gives the new row's id
        run_id = int(inserted[0])
        conn.executemany(
            f"INSERT INTO drift_scores (run_id, {', '.join(score_keys)}) "  # noqa: S608
            f"VALUES (?, {', '.join('?' * len(score_keys))})",
            [
                [run_id]
                + [
                    _dumps(s.get(k)) if k == "hist" and s.get(k) is not None else _plain(s.get(k))
                    for k in score_keys
                ]
                for s in result.get("scores", [])
            ],
        )
    return run_id


def _rows(
    conn: LogConnection, sql: str, params: list[Any] | tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _run_from_row(row: dict[str, Any]) -> dict[str, Any]:
    run = dict(row)
    for key in _JSON_RUN_FIELDS:
        if run.get(key):
            run[key] = json.loads(run[key])
    run["dataset_drift"] = bool(run.get("dataset_drift"))
    run["any_drift"] = bool(run.get("any_drift"))
    return run


def _has_drift_tables(conn: LogConnection) -> bool:
    return {"drift_runs", "drift_scores"} <= tables(conn)


def latest_drift_run(conn: LogConnection | None) -> dict[str, Any] | None:
    """The newest stored drift run with its per-column scores, or None if there is none."""
    if conn is None or not _has_drift_tables(conn):
        return None
    rows = _rows(conn, "SELECT * FROM drift_runs ORDER BY created_at DESC, id DESC LIMIT 1")
    if not rows:
        return None
    run = _run_from_row(rows[0])
    scores = _rows(conn, "SELECT * FROM drift_scores WHERE run_id = ? ORDER BY id", [run["id"]])
    for score in scores:
        score["hist"] = json.loads(score["hist"]) if score.get("hist") else None
    run["scores"] = scores
    return run


def read_latest_drift_run(
    where: Where, *, statement_timeout_ms: int | None = None
) -> dict[str, Any] | None:
    """``latest_drift_run`` of the log at ``where``, opened read-only for this read only
    (None when there is no log yet). ``statement_timeout_ms`` bounds a PostgreSQL session
    (``open_readonly``). Raises ``LogUnavailable`` when the database fails to answer (a
    locked table past the timeout, a lost connection), ConfigError when it cannot be
    reached."""
    location = parse_log_location(where)
    conn = open_readonly(location, statement_timeout_ms=statement_timeout_ms)
    if conn is None:
        return None
    try:
        return latest_drift_run(conn)
    except database_errors(conn) as exc:
        text = location.redact(str(exc)).strip()
        raise LogUnavailable(f"request log {location}: {text}") from None
    finally:
        conn.close()


def drift_history(conn: LogConnection | None, limit: int = 50) -> list[dict[str, Any]]:
    """Stored drift runs, newest first (without per-column scores), at most ``limit``."""
    if conn is None or not _has_drift_tables(conn):
        return []
    rows = _rows(
        conn, "SELECT * FROM drift_runs ORDER BY created_at DESC, id DESC LIMIT ?", [int(limit)]
    )
    return [_run_from_row(r) for r in rows]


def cached_reference(
    conn: LogConnection, tracking_uri: str, name: str, version: str
) -> dict[str, Any] | None:
    """The cached training profile of a model version, or None."""
    if "drift_references" not in tables(conn):
        return None
    row = conn.execute(
        "SELECT profile FROM drift_references WHERE key = ?",
        [f"{tracking_uri}|{name}|{version}"],
    ).fetchone()
    return json.loads(row[0]) if row else None


def cache_reference(
    conn: LogConnection,
    tracking_uri: str,
    name: str,
    version: str,
    run_id: str | None,
    profile: dict[str, Any],
) -> None:
    """Store (or replace) the training profile of a model version."""
    with conn:
        conn.execute(
            # An upsert both backends know (SQLite >= 3.24 and PostgreSQL).
            "INSERT INTO drift_references "
            "(key, tracking_uri, model_name, model_version, run_id, cached_at, profile) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            "tracking_uri = excluded.tracking_uri, model_name = excluded.model_name, "
            "model_version = excluded.model_version, run_id = excluded.run_id, "
            "cached_at = excluded.cached_at, profile = excluded.profile",
            [
                f"{tracking_uri}|{name}|{version}",
                tracking_uri,
                name,
                str(version),
                run_id,
                time.time(),
                json.dumps(profile),
            ],
        )


def drift_score_history(
    conn: LogConnection | None, run_ids: list[int]
) -> dict[str, list[tuple[float, float]]]:
    """Normalised Wasserstein distance per feature over the given drift runs, oldest first:
    {feature: [(run created_at, wasserstein_norm), ...]} (runs without a value left out)."""
    if conn is None or not run_ids or not _has_drift_tables(conn):
        return {}
    marks = ", ".join("?" * len(run_ids))
    rows = conn.execute(
        "SELECT r.created_at, s.feature, s.wasserstein_norm FROM drift_scores s "  # noqa: S608
        f"JOIN drift_runs r ON r.id = s.run_id WHERE r.id IN ({marks}) "
        "ORDER BY r.created_at",
        run_ids,
    ).fetchall()
    out: dict[str, list[tuple[float, float]]] = {}
    for created, feature, value in rows:
        if value is not None:
            out.setdefault(feature, []).append((created, value))
    return out

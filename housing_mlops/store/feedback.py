"""Ground truth in the request log: the ``feedback`` table, and the labelled rows it gives.

``labelled_rows`` joins every label to the answered request row it labels: what live quality
(``evaluate --live``, the report, the service's live-RMSE gauge) is computed from. The
table itself is described in ``store.schema``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from housing_mlops.store.schema import tables

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
    clause = "r.status = 200"
    params: list[Any] = []
    if since_ts is not None:
        clause += " AND r.ts >= ?"
        params.append(float(since_ts))
    if until_ts is not None:
        clause += " AND r.ts < ?"
        params.append(float(until_ts))
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
    join = (
        "FROM feedback f JOIN requests r ON r.request_id = f.request_id "
        "AND COALESCE(r.row_index, 0) = f.row_index WHERE r.status = 200"
    )
    params: list[Any] = []
    if since_ts is not None:
        join += " AND r.ts >= ?"
        params.append(float(since_ts))
    if until_ts is not None:
        join += " AND r.ts < ?"
        params.append(float(until_ts))
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

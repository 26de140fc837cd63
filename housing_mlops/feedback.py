"""Ground truth from a file: ``housing feedback FILE`` (the usual case, labels in bulk).

A CSV or Parquet file with the columns ``request_id`` and ``actual`` (the true value in
$100k, like the predictions) and optionally ``row_index`` (the row of a batch request;
missing or empty means 0). Every row is checked and matched to the request log in one
transaction (``store.apply_feedback``):

- all-or-nothing (default): any bad row (unknown request row, a row labelled already or
  twice in the file, an invalid value) means nothing is applied, and ``DataError`` (exit
  4) gives the counts per reason and the first examples;
- ``skip_bad``: the good rows are applied, the bad ones counted and reported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from housing_mlops.config import Settings
    from housing_mlops.store import FeedbackResult

REQUIRED = ("request_id", "actual")
Progress = Callable[[str, int, int], None]


def _read_frame(path: Path) -> Any:
    import pandas as pd

    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(f"feedback file {path} not found")
    if not path.is_file():
        raise DataError(f"feedback file {path} is not a file")
    try:
        if suffix == ".csv":
            # Everything as text: ids stay as written ("007", "NA"), numbers are parsed
            # below so that a bad cell is reported, not silently turned into NaN.
            return _csv_frame(pd, path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except DataError:
        raise
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read feedback file {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow's and pandas' parser errors
        raise DataError(f"cannot read feedback file {path}: {type(exc).__name__}: {exc}") from None
    got = suffix or path.name
    raise DataError(f"feedback file {path}: use a .csv or .parquet file (got '{got}')")


def _csv_frame(pd: Any, path: Path) -> Any:
    """The CSV as text columns. Rows with one field more than the header (a trailing
    comma: `b0a5,4.5,` as spreadsheets export them) made pandas take the first column as
    the index, so every label read its actual as the request id; the empty last fields are
    dropped instead, and a row whose extra field holds a value is a bad file (exit 4)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if isinstance(frame.index, pd.RangeIndex):
        return frame
    extra = frame.iloc[:, -1] if len(frame.columns) else pd.Series([], dtype=str)
    filled = [i for i, v in enumerate(extra.tolist()) if str(v).strip()]
    if filled or not len(frame.columns):
        row = filled[0] + 1 if filled else 1
        raise DataError(
            f"feedback file {path}: row {row} has more fields than the header "
            f"({', '.join(map(str, frame.columns)) or 'none'}): name every column in the "
            "first line"
        )
    with warnings.catch_warnings():  # "a loss of data": only the empty fields, checked above
        warnings.simplefilter("ignore", pd.errors.ParserWarning)
        return pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)


def _number(value: Any) -> Any:
    """A float for a number or numeric text; the value itself otherwise (reported)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    if value is None:
        return math.nan
    try:
        return float(value)  # numpy scalars
    except (TypeError, ValueError):
        return value


def _row_index(value: Any) -> Any:
    """An int for a whole number (``2``, ``"2"``, ``2.0``); 0 for empty; else as is."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    if isinstance(value, float) and math.isnan(value):
        return 0
    if isinstance(value, bool):
        return value
    number = _number(value)
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)
    return value


def _request_id(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def read_feedback_file(path: Path) -> list[tuple[Any, Any, Any]]:
    """The file's rows as (request_id, row_index, actual) items, in file order.

    DataError for a missing or unreadable file, another format, missing columns or no
    rows. A bad cell is kept as it is, for ``store.apply_feedback`` to count as invalid.
    """
    frame = _read_frame(path)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(
            f"feedback file {path} lacks the column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (needed: request_id, actual; optional: row_index; "
            f"found: {', '.join(map(str, frame.columns)) or 'none'})"
        )
    if len(frame) == 0:
        raise DataError(f"feedback file {path} has no rows")
    ids = [_request_id(v) for v in frame["request_id"].tolist()]
    actual = [_number(v) for v in frame["actual"].tolist()]
    if "row_index" in frame.columns:
        rows = [_row_index(v) for v in frame["row_index"].tolist()]
    else:
        rows = [0] * len(ids)
    return list(zip(ids, rows, actual, strict=True))


def _describe(example: dict[str, Any]) -> str:
    return (
        f"row {example['position'] + 1} (request_id {example['request_id']!r}, row_index "
        f"{example['row_index']}): {example['reason']}"
    )


def apply_feedback_file(
    settings: Settings,
    path: Path,
    *,
    skip_bad: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Apply a file of true values to the request log (``housing feedback``).

    Returns the counts (applied, unknown, duplicate, invalid) with examples. Raises
    DataError (exit 4) for a bad file, or (all-or-nothing) when any row is bad, with the
    same counts as its payload; ConfigError (exit 3) when the log is missing or cannot
    be written.
    """
    from housing_mlops import store

    location = store.parse_log_location(settings.serve.request_log)
    if progress is not None:
        progress(f"reading {path.name}", 0, 1)
    items = read_feedback_file(path)
    if not store.check_request_log(location):
        raise ConfigError(
            f"no request log at {location}: nothing to label (serve the model first, or "
            "point serve.request_log, HOUSING_REQUEST_LOG or --request-log at the log)"
        )
    try:
        result: FeedbackResult = store.apply_feedback(
            location,
            items,
            source=path.name,
            all_or_nothing=not skip_bad,
            progress=progress,
        )
    except store.LogUnavailable as exc:
        raise ConfigError(f"cannot write the labels: {exc}") from None
    payload = {"file": str(path), "request_log": str(location), **result.as_dict()}
    if result.rejected:
        counts = ", ".join(f"{r} {payload[r]}" for r in store.FEEDBACK_REASONS if payload[r])
        first = min(
            (e for examples in result.examples.values() for e in examples),
            key=lambda e: int(e["position"]),
        )
        good = result.received - result.bad
        raise DataError(
            f"feedback file {path}: {result.bad} of {result.received} rows cannot be applied "
            f"({counts}), so none was: first {_describe(first)}; fix the file, or pass "
            f"--skip-bad to apply the {good} good row{'s' if good != 1 else ''}",
            payload=payload,
        )
    return payload

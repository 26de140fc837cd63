"""Where results and progress go: results to stdout (Rich table or JSON), the rest to stderr."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def print_json(payload: Any) -> None:
    """Print one JSON document on stdout (no Rich markup, no wrapping)."""
    print(json.dumps(_jsonable(payload), indent=2, sort_keys=False))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def print_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    title: str | None = None,
    styles: Mapping[str, str] | None = None,
) -> None:
    """Print rows (dicts) as a Rich table with the given columns, in order."""
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, justify="left", style=(styles or {}).get(col), overflow="fold")
    for row in rows:
        table.add_row(*[_fmt(row.get(col)) for col in columns])
    stdout.print(table)


def print_kv(pairs: Mapping[str, Any], title: str | None = None) -> None:
    """Print key/value pairs as a two-column table."""
    print_table(({"key": k, "value": v} for k, v in pairs.items()), ["key", "value"], title=title)


def make_progress(transient: bool = True):  # type: ignore[no-untyped-def]
    """A Rich progress display on stderr (bar, count, elapsed)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=transient,
    )

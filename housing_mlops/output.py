"""Where results and progress go: results to stdout (Rich table or JSON), the rest to stderr."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress

# Width for stdout when it is a pipe or file (and $COLUMNS is unset): Rich would otherwise
# assume 80 columns and fold table cells in the middle of words; a table is only as wide
# as its content needs.
PIPE_WIDTH = 10_000


def _stdout_width() -> int | None:
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None
    return PIPE_WIDTH


class _Console(Console):
    """Rich's console, but a reader that left is a BrokenPipeError for ``cli.main`` to end
    as 141. Rich's own answer is ``SystemExit(1)``: `housing evaluate | head` (a table, not
    --json) ended silently with 1, "unexpected error" in the README's exit-code table."""

    def on_broken_pipe(self) -> None:  # noqa: D102 - Rich's hook
        self.quiet = True
        raise BrokenPipeError(32, "the reader of stdout left")


stdout = _Console(soft_wrap=True, width=_stdout_width())
stderr = _Console(stderr=True)


def _table_width() -> int | None:
    return None if stdout.is_terminal else PIPE_WIDTH


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
    stdout.print(table, width=_table_width())


def print_renderable(renderable: Any) -> None:
    """Print a Rich renderable (a table) on stdout, unwrapped when stdout is a pipe."""
    stdout.print(renderable, width=_table_width())


def print_kv(pairs: Mapping[str, Any], title: str | None = None) -> None:
    """Print key/value pairs as a two-column table."""
    print_table(({"key": k, "value": v} for k, v in pairs.items()), ["key", "value"], title=title)


def make_progress(transient: bool = True) -> Progress:
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


class StageProgress:
    """Progress of a long command on stderr, called as ``progress(description, done, total)``.

    On a terminal: a Rich bar. Elsewhere (CI logs, pipes) a bar would only leave blank
    lines, so it prints one line per stage instead (each time the description changes),
    with the elapsed seconds, so a 60 s step is never 60 s of silence.
    """

    def __init__(self, title: str, *, terminal: bool | None = None) -> None:
        self.title = title
        self.terminal = stderr.is_terminal if terminal is None else terminal
        self._bar: Any = None
        self._task: Any = None
        self._last: str | None = None
        self._started = time.monotonic()

    def __enter__(self) -> StageProgress:
        if self.terminal:
            self._bar = make_progress()
            self._bar.start()
            self._task = self._bar.add_task(self.title, total=None)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._last is not None and exc_type is None:
            self._line(f"done in {time.monotonic() - self._started:.1f}s")

    def __call__(
        self, description: str, done: int | float = 0, total: int | float | None = None
    ) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=description, completed=done, total=total)
            return
        if description != self._last:
            self._last = description
            self._line(description)

    def stage(self, description: str) -> None:
        """A stage without a count (report, evaluate)."""
        self(description)

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self._started
        stderr.print(
            f"{self.title}: {text} [{elapsed:.0f}s]", highlight=False, markup=False, soft_wrap=True
        )

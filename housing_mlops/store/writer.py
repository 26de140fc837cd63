"""``RequestLogWriter``: writes request-log rows off the request path (a queue and a thread),
and keeps them in a local spool while the database is unreachable."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from housing_mlops.store.connection import open_log
from housing_mlops.store.location import parse_log_location
from housing_mlops.store.outage import LogUnavailable, RowsRefused
from housing_mlops.store.rows import ROW_COLUMNS, LoggedRequest, row_values
from housing_mlops.store.sink import LogSink, open_sink
from housing_mlops.store.spool import Spool

_log = logging.getLogger(__name__)

# Retrying an unreachable database: after 0.5 s, then doubling up to this.
_RETRY_MAX_S = 5.0
# How often a healthy writer looks for spools left by ended writers (kill -9 of a sibling).
_ADOPT_EVERY_S = 30.0
_REQUEST_ID = ROW_COLUMNS.index("request_id")


class _Interrupted(Exception):
    """An outage in the middle of a batch: its first ``handled`` rows were written
    (``written`` of them) or set aside, the rest were not."""

    def __init__(self, handled: int, written: int, cause: LogUnavailable) -> None:
        super().__init__(str(cause))
        self.handled = handled
        self.written = written
        self.cause = cause


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What one writer cycle did: counts since the previous report, and the state now."""

    written: int  # rows committed to the database (replayed ones included)
    dropped: int  # rows lost: queue full, rows the database refuses, an unexpected failure
    write_failures: int  # failed attempts to reach the database
    replayed: int  # rows moved from the spool to the database
    depth: int  # rows queued in memory now
    spooled: int  # rows waiting in the local spool file now
    degraded: bool  # the database is unreachable: rows go to the spool
    last_flush_ts: float  # when rows last reached the database (Unix time; 0 = never)


class RequestLogWriter:
    """Writes request-log rows off the request path: a bounded queue drained by a thread.

    ``submit`` only appends the rows' column values to an in-memory deque, so it costs
    the request about a microsecond per row. A daemon thread writes everything queued in
    one transaction at least every ``flush_interval_s``, sooner once ``batch_rows`` are
    waiting, and once more in ``close`` (the server's shutdown), so a graceful stop loses
    nothing. When the queue is full new rows are dropped and counted, never blocking a
    request.

    Database outage: when a write raises ``LogUnavailable`` the writer turns *degraded*:
    that batch and every row after it go to the local spool (``store.spool``, a file in
    ``spool_dir``) in order, and every 0.5-5 s it tries to replay the spool, oldest rows
    first, in batches. When the spool is empty it is healthy again and writes straight to
    the database. A stop while degraded leaves the rows in the spool; the next writer
    that starts with the same ``spool_dir`` adopts and replays them. Without
    ``spool_dir`` rows that cannot be written are dropped and counted.

    ``on_flush(report)`` is called from the writer thread after every cycle with a
    ``FlushReport`` (used for Prometheus metrics without tying this module to
    prometheus_client).
    """

    def __init__(
        self,
        location: Any,
        flush_interval_s: float = 1.0,
        max_queue: int = 100_000,
        batch_rows: int = 5_000,
        on_flush: Callable[[FlushReport], None] | None = None,
        spool_dir: Path | str | None = None,
        instance: str = "",
    ) -> None:
        self.location = parse_log_location(location)
        self.flush_interval_s = float(flush_interval_s)
        self.max_queue = int(max_queue)
        self.batch_rows = max(1, int(batch_rows))
        self.on_flush = on_flush
        self.spool_dir = None if spool_dir is None else Path(spool_dir)
        self.instance = instance
        self._queue: deque[tuple[Any, ...]] = deque()  # column values, see submit
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: LogSink | None = None
        self._spool: Spool | None = None
        self.degraded = False
        self._retry_at = 0.0
        self._retry_delay = 0.5
        self._adopt_at = 0.0
        self.written = 0
        self.dropped = 0  # counted by the request path (a full queue) and the thread alike
        self._dropped_lock = threading.Lock()
        self.write_failures = 0
        self.replayed = 0
        self.last_flush_ts = 0.0
        self._reported = (0, 0, 0, 0)

    @property
    def depth(self) -> int:
        """Rows queued and not yet written."""
        return len(self._queue)

    @property
    def spooled(self) -> int:
        """Rows waiting in the local spool file."""
        return self._spool.rows if self._spool is not None else 0

    def start(self) -> None:
        """Open the log and the spool now (so errors surface at startup), adopt the rows
        that ended writers left in the spool folder, then start the thread."""
        if self._thread is not None:
            return
        if self.location.kind == "sqlite":
            # A path that holds something else is a DataError now, not at the first write.
            # (A PostgreSQL sink connects, and makes the schema, at its first write.)
            open_log(self.location, create=True).close()
        self._sink = open_sink(self.location)
        if self.spool_dir is not None:
            self._spool = Spool(self.spool_dir, self.instance or "writer")
            self._spool.open()
            self._spool.adopt_orphans()
            self._adopt_at = time.monotonic() + _ADOPT_EVERY_S
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()

    def submit(self, rows: list[LoggedRequest]) -> int:
        """Queue rows for writing; returns how many were accepted (the rest are dropped)."""
        # Queued as plain tuples of column values, not as LoggedRequest: the garbage
        # collector stops tracking a tuple of scalars, but not a dataclass instance. A
        # second's worth of queued rows (thousands under load) then piled up in the oldest
        # generation and set off a full collection (~190 ms with the service's heap) every
        # ~15 s: p99 latency went from ~10 ms to ~200 ms in `make bench-serve`.
        return self.submit_values([row_values(row) for row in rows])

    def submit_values(self, values: list[tuple[Any, ...]]) -> int:
        """``submit`` for rows already given as column values (``row_values`` order, e.g.
        ``rows.answered_values``)."""
        free = self.max_queue - len(self._queue)
        accepted = values if len(values) <= free else values[: max(free, 0)]
        self._queue.extend(accepted)
        if len(accepted) < len(values):
            self._drop(len(values) - len(accepted))
        if len(self._queue) >= self.batch_rows:
            self._wake.set()
        return len(accepted)

    def _drop(self, rows: int) -> None:
        """Count ``rows`` as dropped, under a lock: ``submit`` (the request path) and the
        writer thread both count, and ``+=`` on an attribute is a read and a write that a
        thread switch can come between, losing the other thread's rows."""
        with self._dropped_lock:
            self.dropped += rows

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread after a final flush of everything queued (to the database, or
        to the spool while it is unreachable)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        if thread.is_alive():
            self._rescue(timeout)
        self._thread = None

    def _rescue(self, timeout: float) -> None:
        """The thread is stuck in a database call (a silent server, a locked table): the
        rows still queued go to a spool file of their own, left for the next writer. The
        batch the thread holds is lost unless its write completes before the process
        exits."""
        rows = [self._queue.popleft() for _ in range(len(self._queue))]
        if self.spool_dir is not None and rows:
            spool = Spool(self.spool_dir, self.instance or "writer")
            try:
                spool.open()
                spool.append(rows)
            except Exception:  # noqa: BLE001 - logged below as lost
                _log.exception("request log: could not spool the queued rows")
            else:
                rows = []
            finally:
                spool.close()
        _log.error(
            "request log: the writer did not finish within %.0f s (the database does not "
            "answer); %d queued row(s) lost, the rest left in the spool",
            timeout,
            len(rows),
        )

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait(self._wait_s())
                self._wake.clear()
                self._guarded_cycle(final=False)
            self._guarded_cycle(final=True)
        finally:
            if self._spool is not None:
                if self._spool.rows:
                    _log.warning(
                        "request log: %d row(s) stay in the spool %s, replayed at the next start",
                        self._spool.rows,
                        self._spool.path,
                    )
                self._spool.close()
            if self._sink is not None:
                self._sink.close()

    def _guarded_cycle(self, *, final: bool) -> None:
        """``_cycle``, surviving what it does not expect: a spool that cannot be read or
        trimmed (a full disk, a lock held from outside). An escaped exception used to end
        the thread, and every later row then stayed in memory, unwritten and uncounted. The
        rows stay where they were (queued or spooled; a replayed batch the spool could not
        forget is replayed again: at least once), and the next attempt backs off."""
        try:
            self._cycle(final=final)
        except Exception:  # noqa: BLE001 - the writer must outlive any single failure
            _log.exception("request log: the writer's cycle failed; trying again")
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX_S)
            self._report()

    def _wait_s(self) -> float:
        if self._spool is not None and self._spool.rows:
            return max(0.05, min(self.flush_interval_s, self._retry_at - time.monotonic()))
        return self.flush_interval_s

    def _cycle(self, *, final: bool) -> None:
        n = len(self._queue)
        # popleft n times: rows appended meanwhile stay for the next cycle.
        batch = [self._queue.popleft() for _ in range(n)]
        spool = self._spool
        if spool is not None and spool.rows:
            # Rows already wait in the spool: these go behind them, to keep the order.
            self._to_spool(batch)
            if not (final and self.degraded) and time.monotonic() >= self._retry_at:
                self._replay()
        elif batch:
            self._write(batch)
        if spool is not None and not final and not self.degraded:
            now = time.monotonic()
            if now >= self._adopt_at:
                self._adopt_at = now + _ADOPT_EVERY_S
                if spool.adopt_orphans():
                    self._retry_at = 0.0
        if not self.last_flush_ts:
            self.last_flush_ts = time.time()
        self._report()

    def _write(self, batch: Sequence[tuple[Any, ...]]) -> None:
        try:
            self._sink_write(batch)
        except _Interrupted as stop:
            self._failed(stop.cause)
            self._to_spool(batch[stop.handled :])
        except Exception:  # noqa: BLE001 - a log failure must never stop serving
            self._drop(len(batch))
            _log.exception("request log: could not write %d row(s)", len(batch))
        else:
            self._recovered()

    def _replay(self) -> None:
        """Replay the spool oldest first, in batches, until it is empty or a write fails."""
        spool = self._spool
        assert spool is not None
        while spool.rows:
            seq, rows = spool.head(self.batch_rows)
            if not rows:
                spool.rows = 0
                break
            try:
                self.replayed += self._sink_write(rows)
            except _Interrupted as stop:
                self._failed(stop.cause)
                # The rows written or set aside before the outage are not replayed again.
                self.replayed += stop.written
                spool.remove_oldest(stop.handled)
                return
            except Exception:  # noqa: BLE001 - an unexpected failure must not block the rest
                _log.exception("request log: dropping %d spooled row(s) it refused", len(rows))
                self._drop(len(rows))
            spool.remove_through(seq, len(rows))
        self._recovered()

    def _recovered(self) -> None:
        if self.degraded:
            _log.warning(
                "request log: the database is back; %d spooled row(s) replayed so far",
                self.replayed,
            )
        self.degraded = False
        self._retry_delay = 0.5

    def _sink_write(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Write ``rows`` in order; returns how many were written.

        Rows the database refuses for good (``RowsRefused``: a constraint, a column's type)
        are found by halving the refused batch until single rows remain, and set aside:
        dropped, counted in ``dropped`` and named in one log line per batch, while every
        other row of the batch is written, in order. Writing them again would fail every
        time, and the rows behind them would wait forever. An outage (``LogUnavailable``)
        raises ``_Interrupted`` saying how many leading rows were already written or set
        aside, so only the others are spooled or replayed again.
        """
        assert self._sink is not None
        pending = [rows]  # contiguous parts, the next one last
        handled = written = 0
        refused: list[tuple[Any, ...]] = []
        reason = ""
        try:
            while pending:
                part = pending.pop()
                try:
                    self._sink.write(part)
                except RowsRefused as exc:
                    if len(part) > 1:
                        half = len(part) // 2
                        pending += [part[half:], part[:half]]
                        continue
                    refused.append(part[0])
                    reason = str(exc)
                except LogUnavailable as exc:
                    raise _Interrupted(handled, written, exc) from None
                else:
                    written += len(part)
                    self.written += len(part)
                    self.last_flush_ts = time.time()
                handled += len(part)
        finally:
            if refused:
                self._set_aside(refused, reason)
        return written

    def _set_aside(self, refused: list[tuple[Any, ...]], reason: str) -> None:
        self._drop(len(refused))
        ids = sorted({str(row[_REQUEST_ID]) for row in refused})
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        _log.error(
            "request log: %d row(s) dropped, the database refuses them (%s); request_id %s",
            len(refused),
            reason,
            shown,
        )

    def _failed(self, exc: Exception) -> None:
        self.write_failures += 1
        if not self.degraded:
            where = "the spool" if self._spool is not None else "nowhere (no spool: dropped)"
            _log.warning("request log: database unreachable (%s); rows go to %s", exc, where)
        self.degraded = True
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX_S)

    def _to_spool(self, batch: Sequence[tuple[Any, ...]]) -> None:
        if not batch:
            return
        if self._spool is None:
            self._drop(len(batch))
            return
        try:
            self._spool.append(batch)
        except Exception:  # noqa: BLE001 - a full disk must not stop serving either
            self._drop(len(batch))
            _log.exception("request log: could not spool %d row(s)", len(batch))

    def _report(self) -> None:
        if self.on_flush is None:
            return
        now = (self.written, self.dropped, self.write_failures, self.replayed)
        before = self._reported
        report = FlushReport(
            written=now[0] - before[0],
            dropped=now[1] - before[1],
            write_failures=now[2] - before[2],
            replayed=now[3] - before[3],
            depth=self.depth,
            spooled=self.spooled,
            degraded=self.degraded,
            last_flush_ts=self.last_flush_ts,
        )
        try:
            self.on_flush(report)
        except Exception:  # noqa: BLE001
            _log.exception("request log: on_flush callback failed")
        self._reported = now

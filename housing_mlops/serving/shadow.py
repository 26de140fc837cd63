"""Shadow scoring: the challenger scores the champion's requests off the hot path.

A ``/predict`` answered by the champion hands its rows (the feature array and the
request-log rows, already carrying the champion's answer) to ``ShadowScorer.submit`` and
answers at once. A worker thread takes what is queued, up to ``batch_rows`` rows at a time,
predicts them with the challenger in one call, writes the challenger's version and
prediction into the rows and only then submits them to the request log. So the log row
is queued exactly once, by whoever owns it:

- queued for shadow: the worker submits it, with the shadow prediction, or without one when
  the challenger raised (counted: ``housing_shadow_errors_total``) or was removed meanwhile;
- queue full (``serve.shadow_queue_size`` rows waiting: a slow or stuck challenger, or more
  load than it keeps up with): ``submit`` returns False and the request path logs the rows
  itself, without a shadow prediction (counted: ``housing_shadow_dropped_total``);
- at shutdown ``close`` lets the worker drain the queue; if the challenger does not return
  within the timeout, whatever it still holds or has queued is logged without a shadow
  prediction by ``close`` itself, and the worker, should it return later, does not log it
  again (each batch is claimed once, under the lock).

The answer never waits for the challenger: ``submit`` is an append under a lock. The
challenger still competes for the CPU (and the GIL between its numpy calls), which is what
``make bench-shadow`` measures. When the champion predicts on the event loop
(``help_on_loop``), the loop also scores a full batch itself, after the answers that
filled it: the loop would otherwise hold the GIL so much that the thread falls behind.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from housing_mlops.inference.loaded_model import LoadedModel

if TYPE_CHECKING:
    from housing_mlops.serving.metrics import ServingMetrics
    from housing_mlops.store import LoggedRequest

log = logging.getLogger(__name__)

# A failing challenger would log one traceback per batch: at most one per this many seconds.
_ERROR_LOG_EVERY_S = 60.0
# Woken by a request, the worker waits this long for company before it scores (unless a
# full batch is already queued): a predict call costs about as much for 1 row as for 20, so
# scoring each request alone would cost the challenger several times the champion's CPU
# (the champion's micro-batches are filled by concurrency). Nobody waits for these answers.
LINGER_S = 0.005

Item = tuple[np.ndarray, list["LoggedRequest"]]


class _Batch:
    """Items taken by the worker; whoever claims it first (worker or ``close``) logs it."""

    __slots__ = ("claimed", "items")

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.claimed = False


class ShadowScorer:
    """A bounded queue of rows for the challenger and the thread that scores them."""

    def __init__(
        self,
        current: Callable[[], LoadedModel | None],
        submit_log: Callable[[list[LoggedRequest]], int],
        metrics: ServingMetrics,
        max_rows: int = 10_000,
        batch_rows: int = 256,
        threads: int = 1,
        help_on_loop: bool = False,
    ) -> None:
        self._current = current
        self._submit_log = submit_log
        self.metrics = metrics
        self.max_rows = max(1, int(max_rows))
        self.batch_rows = max(1, int(batch_rows))
        self.threads = threads
        self._lock = threading.Lock()
        self._queue: deque[Item] = deque()
        self._rows = 0  # rows in _queue
        self._inflight: set[_Batch] = set()  # taken, not yet logged (worker and loop)
        # With a champion that predicts on the event loop (inline micro-batches), the loop
        # holds the GIL almost all the time under load and the worker thread, starved,
        # falls behind: then the loop scores a full batch itself, right after the
        # answers that filled it (``submit``), and the worker takes what is left.
        self.help_on_loop = help_on_loop
        self._help_scheduled = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0
        self.scored = 0  # rows scored by the challenger
        self.batches = 0  # predict calls of the challenger
        self.dropped = 0  # rows not queued (queue full, or not running)
        self.errors = 0  # rows the challenger failed to score

    @property
    def depth(self) -> int:
        """Rows waiting for the challenger (not counting the batch being scored)."""
        return self._rows

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def submit(self, X: np.ndarray, rows: list[LoggedRequest]) -> bool:
        """Queue a request's rows for shadow scoring; False (and counted) when the queue is
        full or the scorer is not running: the caller then logs the rows itself."""
        n = len(rows)
        with self._lock:
            if self._thread is None or self._stop.is_set() or self._rows + n > self.max_rows:
                self.dropped += n
                dropped = True
            else:
                self._queue.append((X, rows))
                self._rows += n
                dropped = False
        if dropped:
            self.metrics.shadow_dropped.inc(n)
            return False
        if self.help_on_loop and not self._help_scheduled and self._rows >= self.batch_rows:
            self._help_scheduled = True
            asyncio.get_running_loop().call_soon(self._help)
        self._wake.set()
        return True

    def _help(self) -> None:
        """On the event loop: score one batch of what is queued (see ``help_on_loop``)."""
        self._help_scheduled = False
        if self._stop.is_set():
            return
        batch = self._take()
        if batch is not None:
            self._score(batch)
            self.metrics.shadow_queue_depth.set(self._rows)

    def close(self, timeout: float = 10.0) -> None:
        """Score what is queued, then stop; rows the challenger has not scored within
        ``timeout`` seconds are logged without a shadow prediction."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        if thread.is_alive():
            with self._lock:
                items: list[Item] = []
                for batch in self._inflight:
                    if not batch.claimed:
                        batch.claimed = True
                        items.extend(batch.items)
                self._inflight.clear()
                items.extend(self._queue)
                self._queue.clear()
                self._rows = 0
            log.error(
                "shadow: the challenger did not finish within %.0f s; %d request(s) logged "
                "without a shadow prediction",
                timeout,
                len(items),
            )
            for _, rows in items:
                self._submit_log(rows)
        self._thread = None
        self.metrics.shadow_queue_depth.set(0)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        from housing_mlops.serving.batching import _limit_threads

        _limit_threads(self.threads)
        while True:
            self._wake.wait()
            if self._rows < self.batch_rows and not self._stop.is_set():
                self._stop.wait(LINGER_S)  # gather company (close() cuts it short)
            self._wake.clear()
            while (batch := self._take()) is not None:
                self._score(batch)
                self.metrics.shadow_queue_depth.set(self._rows)
            if self._stop.is_set() and not self._queue:
                return

    def _take(self) -> _Batch | None:
        with self._lock:
            if not self._queue:
                return None
            items = [self._queue.popleft()]
            rows = len(items[0][1])
            while self._queue and rows + len(self._queue[0][1]) <= self.batch_rows:
                item = self._queue.popleft()
                items.append(item)
                rows += len(item[1])
            self._rows -= rows
            batch = _Batch(items)
            self._inflight.add(batch)
            return batch

    def _score(self, batch: _Batch) -> None:
        items = batch.items
        model = self._current()
        n = sum(len(rows) for _, rows in items)
        preds: np.ndarray | None = None
        if model is not None:
            self.batches += 1
            try:
                X = items[0][0] if len(items) == 1 else np.concatenate([x for x, _ in items])
                preds = np.asarray(model.predict(X), dtype=np.float64).reshape(-1)
                if preds.shape[0] != n:
                    got = preds.shape[0]
                    raise ValueError(f"the challenger returned {got} predictions for {n} rows")
            except Exception:  # noqa: BLE001 - the challenger must never affect answers or logs
                preds = None
                self.errors += n
                self.metrics.shadow_errors.inc(n)
                now = time.monotonic()
                if now - self._last_error_log >= _ERROR_LOG_EVERY_S:
                    self._last_error_log = now
                    log.exception(
                        "shadow: challenger version %s failed to score %d row(s); they are "
                        "logged without a shadow prediction (counted in "
                        "housing_shadow_errors_total)",
                        model.meta.version,
                        n,
                    )
        if preds is not None and model is not None:
            version = model.meta.version
            values = preds.tolist()
            i = 0
            for _, rows in items:
                for row in rows:
                    row.shadow_version = version
                    row.shadow_prediction = values[i]
                    i += 1
            self.scored += n
            self.metrics.observe_predictions(version, values, role="challenger")
        with self._lock:
            if batch.claimed:  # close() gave up waiting and logged these already
                return
            batch.claimed = True
            self._inflight.discard(batch)
        for _, rows in items:
            self._submit_log(rows)

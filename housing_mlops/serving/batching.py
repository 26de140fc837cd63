"""Micro-batching: concurrent ``/predict`` requests share one predict call.

``MicroBatcher`` gathers concurrent requests into one predict call. A small batch (at most
``serve.microbatch_inline_rows`` rows) is predicted on the event loop itself: the fast
path holds the GIL for most of a batch anyway, so a thread would only add a hand-off (the
executor's queue, a thread wake-up, ``call_soon_threadsafe``) and GIL switches between
the two threads, for no parallelism. A bigger batch runs on a single predictor thread, so
the event loop keeps serving meanwhile. Either way OpenMP/BLAS pools are limited
(``serve.predictor_threads``), so two cores are not oversubscribed. The model is read once
per batch: a hot reload swaps the reference and batches already dispatched finish on the
old model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from housing_mlops.serving.predictor import LoadedModel


def _limit_threads(threads: int) -> None:
    from threadpoolctl import threadpool_limits

    # Called in the predictor thread: OpenMP limits are per thread.
    threadpool_limits(limits=threads)


Result = tuple[np.ndarray, LoadedModel]


class MicroBatcher:
    """Gathers concurrent predict calls into one call, on the event loop or the thread.

    The first request of a batch waits at most ``window_s`` for company; 0 sets no timer:
    the batch leaves in the same turn of the event loop, with every request that reached
    the batcher in that turn (those whose bodies arrived together). While a batch is
    being predicted on the thread, new requests queue and go together as soon as it
    finishes. A batch holds at most ``max_rows`` rows (a bigger request goes alone); one of
    at most ``inline_rows`` rows is predicted on the event loop (0: always the thread).
    """

    def __init__(
        self,
        current_model: Callable[[], LoadedModel | None],
        window_s: float = 0.001,
        max_rows: int = 256,
        threads: int = 1,
        inline_rows: int = 0,
    ) -> None:
        self._current = current_model
        self.window_s = max(0.0, float(window_s))
        self.max_rows = max(1, int(max_rows))
        self.threads = threads
        self.inline_rows = max(0, int(inline_rows))
        self._loop_limited = False
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[tuple[np.ndarray, asyncio.Future[Result]]] = []
        self._pending_rows = 0
        self._busy = False
        self._timer: asyncio.Handle | None = None
        self.batches = 0
        self.rows = 0

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="predictor",
                initializer=_limit_threads,
                initargs=(self.threads,),
            )

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def predict(self, X: np.ndarray) -> Result:
        """Predictions for the rows of ``X`` and the model that made them."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        self._pending.append((X, fut))
        self._pending_rows += X.shape[0]
        if not self._busy:
            if self._pending_rows >= self.max_rows:
                self._dispatch()
            elif self._timer is None:
                if self.window_s == 0:
                    self._timer = loop.call_soon(self._dispatch)
                else:
                    self._timer = loop.call_later(self.window_s, self._dispatch)
        return await fut

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy or not self._pending:
            return
        take, rows = 0, 0
        for X, _ in self._pending:
            if take and rows + X.shape[0] > self.max_rows:
                break
            take += 1
            rows += X.shape[0]
        batch, self._pending = self._pending[:take], self._pending[take:]
        self._pending_rows -= rows
        model = self._current()
        if model is None:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(RuntimeError("no model loaded"))
            return
        X = batch[0][0] if take == 1 else np.concatenate([x for x, _ in batch])
        self.batches += 1
        self.rows += rows
        if rows <= self.inline_rows:
            self._predict_inline(model, X, batch)
            if self._pending and self._timer is None:
                # What max_rows left behind goes in the next turn (answers first).
                self._timer = asyncio.get_running_loop().call_soon(self._dispatch)
            return
        self._busy = True
        loop = asyncio.get_running_loop()
        self.start()
        job = loop.run_in_executor(self._executor, model.predict, X)
        job.add_done_callback(lambda done: self._finish(done, batch, model))

    def _predict_inline(
        self,
        model: LoadedModel,
        X: np.ndarray,
        batch: list[tuple[np.ndarray, asyncio.Future[Result]]],
    ) -> None:
        """Predict ``batch`` here, on the event loop's thread."""
        if not self._loop_limited:
            _limit_threads(self.threads)  # OpenMP limits are per thread: this one's too
            self._loop_limited = True
        try:
            preds = model.predict(X)
        except Exception as exc:  # noqa: BLE001 - handed to every request of the batch
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        _resolve(batch, preds, model)

    def _finish(
        self,
        done: asyncio.Future[np.ndarray],
        batch: list[tuple[np.ndarray, asyncio.Future[Result]]],
        model: LoadedModel,
    ) -> None:
        self._busy = False
        exc = done.exception()
        if exc is not None:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            _resolve(batch, done.result(), model)
        if self._pending:
            # These waited while the previous batch ran: go now.
            self._dispatch()


def _resolve(
    batch: list[tuple[np.ndarray, asyncio.Future[Result]]], preds: np.ndarray, model: LoadedModel
) -> None:
    """Each request's slice of the batch's predictions."""
    start = 0
    for X, fut in batch:
        n = X.shape[0]
        if not fut.done():
            fut.set_result((preds[start : start + n], model))
        start += n

"""Micro-batching: concurrent ``/predict`` requests share one predict call.

``MicroBatcher`` gathers concurrent requests into one predict call. A small batch (at most
``serve.microbatch_inline_rows`` rows) is predicted on the event loop itself: the fast
path holds the GIL for most of a batch anyway, so a Python thread would only add a hand-off
(the executor's queue, a thread wake-up, ``call_soon_threadsafe``) and GIL switches between
the two threads, for no parallelism. Compiled trees are the exception: their library has
a worker thread of its own that needs no GIL, so the loop computes a small batch's features,
hands the trees to that thread and goes on answering; the thread's eventfd wakes the loop
when the predictions are there (``make bench-serve``: about 7% more requests a second, the
README's levers table). A bigger batch runs on a single predictor thread, so the event loop
keeps serving meanwhile. Either way OpenMP/BLAS pools are limited
(``serve.predictor_threads``), so two cores are not oversubscribed. The model is read once
per batch: a hot reload swaps the reference and batches already dispatched finish on the
old model.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from housing_mlops.inference.compiled import StagedPredict, finish
from housing_mlops.inference.loaded_model import LoadedModel

log = logging.getLogger(__name__)


def _limit_threads(threads: int) -> None:
    from threadpoolctl import threadpool_limits

    # Called in the predictor thread: OpenMP limits are per thread.
    threadpool_limits(limits=threads)


Result = tuple[np.ndarray, LoadedModel]
Batch = list[tuple[np.ndarray, "asyncio.Future[Result]"]]
# A batch whose trees run on the compiled library's thread: the requests, the model, the
# arrays the thread reads and writes (kept alive here until it is done), and what to add to
# the trees' sum (or None).
InFlight = tuple[Batch, LoadedModel, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


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
        # The eventfd of the compiled trees' thread: None until first needed, -1 when this
        # platform has none (then the trees run on the loop as any model).
        self._eventfd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: InFlight | None = None
        self._drained: asyncio.Event | None = None
        self.batches = 0
        self.rows = 0
        self.off_loop_batches = 0  # batches whose trees ran on the compiled library's thread

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="predictor",
                initializer=_limit_threads,
                initargs=(self.threads,),
            )

    def close(self) -> None:
        """Stop the predictor thread (any thread may call it; ``drain`` first, on the loop,
        when batches may have gone to the compiled trees' thread)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def drain(self, timeout_s: float = 10.0) -> None:
        """On the event loop: wait for a batch on the compiled trees' thread, then stop
        watching its eventfd and close it. Were the thread still busy after ``timeout_s``,
        the eventfd stays open (the thread will still write to it) and the log says so."""
        if self._in_flight is not None and self._drained is not None:
            try:
                await asyncio.wait_for(self._drained.wait(), timeout_s)
            except TimeoutError:
                log.warning("the compiled trees' thread is still busy; not closing its eventfd")
                return
        if self._eventfd is not None and self._eventfd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._eventfd)
            os.close(self._eventfd)
        self._eventfd = None

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
            _fail(batch, RuntimeError("no model loaded"))
            if self._pending and self._timer is None:
                # What max_rows left behind fails too: no later request may come to send it
                # (a challenger just unloaded gets no more).
                self._timer = asyncio.get_running_loop().call_soon(self._dispatch)
            return
        X = batch[0][0] if take == 1 else np.concatenate([x for x, _ in batch])
        self.batches += 1
        self.rows += rows
        if rows <= self.inline_rows:
            if not self._start_off_loop(model, X, batch):
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

    def _start_off_loop(self, model: LoadedModel, X: np.ndarray, batch: Batch) -> bool:
        """Compute the features here and hand the compiled trees to their thread; the
        batch is answered by ``_trees_done``. False (nothing done) for any other model."""
        stages = model.predict
        if not isinstance(stages, StagedPredict) or not self._watching():
            return False
        self._limit_loop_threads()
        try:
            Z, add = stages.stage(X)
        except Exception as exc:  # noqa: BLE001 - handed to every request of the batch
            _fail(batch, exc)
            return True
        out = np.empty(Z.shape[0], dtype=np.float64)
        status = np.zeros(1, dtype=np.int32)
        if not stages.trees.start(Z, out, status, self._eventfd):  # type: ignore[arg-type]
            # No thread (it could not be created): the trees here, as before.
            try:
                preds = finish(stages.trees.predict(Z), add)
            except Exception as exc:  # noqa: BLE001
                _fail(batch, exc)
                return True
            _resolve(batch, preds, model)
            return True
        self._busy = True
        self._in_flight = (batch, model, Z, out, status, add)
        if self._drained is not None:
            self._drained.clear()
        self.off_loop_batches += 1
        return True

    def _watching(self) -> bool:
        """Whether the loop watches the eventfd of the compiled trees' thread (created at the
        first call; False where there are no eventfds: not Linux). A batcher used from a new
        event loop (its old one ended without ``drain``) gets a new eventfd, watched by this
        loop, once the old one has no batch in flight."""
        loop = asyncio.get_running_loop()
        if self._eventfd is not None and self._eventfd >= 0 and self._loop is not loop:
            if self._in_flight is not None:
                return False  # the old loop's batch still runs: the trees here meanwhile
            if self._loop is not None and self._loop.is_closed():
                os.close(self._eventfd)  # a closed loop watches nothing any more
            self._eventfd = None
        if self._eventfd is None:
            if not hasattr(os, "eventfd"):
                self._eventfd = -1
                return False
            self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._loop = loop
            loop.add_reader(self._eventfd, self._trees_done)
            self._drained = asyncio.Event()
            self._drained.set()
        return self._eventfd >= 0

    def _trees_done(self) -> None:
        """The compiled trees' thread finished the batch in flight: answer it, go on."""
        try:
            os.eventfd_read(self._eventfd)  # type: ignore[arg-type]
        except BlockingIOError:
            return
        job, self._in_flight = self._in_flight, None
        self._busy = False
        if self._drained is not None:
            self._drained.set()
        if job is not None:
            batch, model, _, out, status, add = job
            if status[0] != 0:
                _fail(batch, MemoryError("the compiled trees could not allocate their rows"))
            else:
                _resolve(batch, finish(out, add), model)
        if self._pending:
            self._dispatch()

    def _limit_loop_threads(self) -> None:
        if not self._loop_limited:
            _limit_threads(self.threads)  # OpenMP limits are per thread: this one's too
            self._loop_limited = True

    def _predict_inline(
        self,
        model: LoadedModel,
        X: np.ndarray,
        batch: Batch,
    ) -> None:
        """Predict ``batch`` here, on the event loop's thread."""
        self._limit_loop_threads()
        try:
            preds = model.predict(X)
        except Exception as exc:  # noqa: BLE001 - handed to every request of the batch
            _fail(batch, exc)
            return
        _resolve(batch, preds, model)

    def _finish(
        self,
        done: asyncio.Future[np.ndarray],
        batch: Batch,
        model: LoadedModel,
    ) -> None:
        self._busy = False
        exc = done.exception()
        if exc is not None:
            _fail(batch, exc)
        else:
            _resolve(batch, done.result(), model)
        if self._pending:
            # These waited while the previous batch ran: go now.
            self._dispatch()


def _fail(batch: Batch, exc: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc)


def _resolve(batch: Batch, preds: np.ndarray, model: LoadedModel) -> None:
    """Each request's slice of the batch's predictions."""
    start = 0
    for X, fut in batch:
        n = X.shape[0]
        if not fut.done():
            fut.set_result((preds[start : start + n], model))
        start += n

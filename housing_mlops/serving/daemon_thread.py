"""``in_daemon_thread(fn, *args)``: await a blocking call that may wait for the request
log's database, run in a daemon thread of its own.

Not in asyncio's default executor (``asyncio.to_thread``): its few threads (CPUs + 4, six
on two cores) also run the service's stop (the request-log writer's final flush) and are
joined when the process exits. Calls held by a locked table or a silent server used to
fill them: every later ``/metrics`` and ``/feedback`` queued behind them, and a stopped
service did not exit. A daemon thread is joined by nobody: a cancelled await stops
waiting, and the thread ends with its call (which the store bounds) or with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_daemon_thread(fn: Callable[..., T], *args: Any, name: str) -> T:
    """``fn(*args)`` in a new daemon thread called ``name``; its result or its exception."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():  # cancelled meanwhile: nobody waits
            return
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)

    def work() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await done

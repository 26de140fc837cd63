"""The request-log database: the only package that touches SQLite.

One interface, whatever the caller:

- open: ``open_log(path, create=...)`` for writing, ``open_readonly(path)`` for reading,
  ``create_log(path)`` at the service's start-up, ``check_request_log(path)`` to ask
  whether a path is a log (``store.connection``);
- the request log: ``LoggedRequest`` (a typed row, ``store.rows``) written by
  ``RequestLogWriter`` (``store.writer``), read by ``window_counts``, ``window_sample`` and
  ``serving_stats`` (``store.request_log``);
- drift history: ``save_drift_run``, ``latest_drift_run``, ``drift_history`` and the
  reference-profile cache ``cached_reference`` / ``cache_reference``
  (``store.drift_history``);
- the tables themselves: ``store.schema``.

Readers and writers take the ``sqlite3.Connection`` an opener returned; readers accept
None (no log yet) where that means "nothing logged".
"""

from __future__ import annotations

from housing_mlops.store.connection import (
    check_request_log,
    create_log,
    open_log,
    open_readonly,
)
from housing_mlops.store.drift_history import (
    cache_reference,
    cached_reference,
    drift_history,
    drift_score_history,
    latest_drift_run,
    save_drift_run,
)
from housing_mlops.store.request_log import (
    serving_stats,
    window_counts,
    window_sample,
)
from housing_mlops.store.rows import LoggedRequest
from housing_mlops.store.schema import REQUEST_COLUMNS
from housing_mlops.store.writer import FlushReport, RequestLogWriter

__all__ = [
    "REQUEST_COLUMNS",
    "FlushReport",
    "LoggedRequest",
    "RequestLogWriter",
    "cache_reference",
    "cached_reference",
    "check_request_log",
    "create_log",
    "drift_history",
    "drift_score_history",
    "latest_drift_run",
    "open_log",
    "open_readonly",
    "save_drift_run",
    "serving_stats",
    "window_counts",
    "window_sample",
]

"""The request-log database: the only package that touches SQLite and PostgreSQL.

One interface, whatever the caller and whichever backend (a SQLite file, the default, or
a ``postgresql://`` URL; ``store.postgres`` is the only importer of psycopg):

- where: ``parse_log_location(value)`` -> ``LogLocation`` (``str()`` hides the password);
- open: ``open_log(path, create=...)`` for writing, ``open_readonly(path)`` for reading
  (``damaged_log_errors(path)`` around a read turns a damaged file into a DataError),
  ``create_log(path)`` at the service's start-up, ``check_request_log(path)`` to ask
  whether a path is a log (``store.connection``); every opener takes a path, a URL or a
  ``LogLocation``;
- write: ``open_sink(location)`` -> ``LogSink`` (``write(rows)`` in one transaction,
  ``LogUnavailable`` when the database cannot take them, ``store.sink``);
- the request log: ``LoggedRequest`` (a typed row, ``store.rows``) written by
  ``RequestLogWriter`` (``store.writer``), read by ``window_counts``, ``window_sample`` and
  ``serving_stats``, and champion vs challenger by ``role_stats`` (``store.request_log``);
- drift history: ``save_drift_run``, ``latest_drift_run`` (``read_latest_drift_run``
  opens the log for that one read), ``drift_history`` and the
  reference-profile cache ``cached_reference`` / ``cache_reference``
  (``store.drift_history``);
- ground truth: ``apply_feedback`` -> ``FeedbackResult`` (labels written in one
  transaction, counted as applied / unknown / duplicate / invalid), ``labelled_rows`` ->
  ``LabelledRows`` (answered rows joined to their true value in ``feedback``) and
  ``live_error_sums`` (live error sums per role and version, aggregated in the database;
  ``store.feedback``);
- the tables themselves: ``store.schema``; ``LogUnavailable`` (an outage) and
  ``RowsRefused`` (rows the database refuses for good): ``store.outage``.

Inside the package imports run one way (an import-linter contract): the users of a
connection (writer, feedback, drift history, the readers and sinks) over the openers
(``store.connection``), over the PostgreSQL backend, over what every layer shares (the
schema, the row, the location, the outage).

Readers and writers take the connection an opener returned (``LogConnection``: a
``sqlite3.Connection`` or a ``store.postgres.PgConnection``); readers accept None (no
log yet) where that means "nothing logged".
"""

from __future__ import annotations

from housing_mlops.store.connection import (
    SERVICE_STATEMENT_TIMEOUT_MS,
    LogConnection,
    check_request_log,
    create_log,
    damaged_log_errors,
    open_log,
    open_readonly,
)
from housing_mlops.store.drift_history import (
    cache_reference,
    cached_reference,
    drift_history,
    drift_score_history,
    latest_drift_run,
    read_latest_drift_run,
    save_drift_run,
)
from housing_mlops.store.feedback import (
    REASONS as FEEDBACK_REASONS,
)
from housing_mlops.store.feedback import (
    FeedbackResult,
    LabelledRows,
    apply_feedback,
    labelled_rows,
    live_error_sums,
)
from housing_mlops.store.location import LogLocation, is_log_url, parse_log_location
from housing_mlops.store.outage import LogUnavailable
from housing_mlops.store.request_log import (
    role_stats,
    serving_stats,
    window_counts,
    window_sample,
)
from housing_mlops.store.rows import ROW_COLUMNS, LoggedRequest, answered_values, row_values
from housing_mlops.store.schema import REQUEST_COLUMNS, SCHEMA_VERSION
from housing_mlops.store.sink import LogSink, open_sink
from housing_mlops.store.spool import check_spool_dir
from housing_mlops.store.writer import FlushReport, RequestLogWriter

__all__ = [
    "FEEDBACK_REASONS",
    "REQUEST_COLUMNS",
    "ROW_COLUMNS",
    "SCHEMA_VERSION",
    "SERVICE_STATEMENT_TIMEOUT_MS",
    "FeedbackResult",
    "FlushReport",
    "LabelledRows",
    "LogConnection",
    "LogLocation",
    "LogSink",
    "LogUnavailable",
    "LoggedRequest",
    "RequestLogWriter",
    "answered_values",
    "apply_feedback",
    "cache_reference",
    "cached_reference",
    "check_request_log",
    "check_spool_dir",
    "create_log",
    "damaged_log_errors",
    "drift_history",
    "drift_score_history",
    "is_log_url",
    "labelled_rows",
    "live_error_sums",
    "latest_drift_run",
    "open_log",
    "open_readonly",
    "open_sink",
    "parse_log_location",
    "read_latest_drift_run",
    "role_stats",
    "row_values",
    "save_drift_run",
    "serving_stats",
    "window_counts",
    "window_sample",
]

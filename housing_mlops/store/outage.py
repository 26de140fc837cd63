"""``LogUnavailable``: the request log cannot take or give rows right now; ``RowsRefused``:
it refuses some rows for good.

Raised by every backend (``store.sink``'s SQLite sink, ``store.postgres``) and by the
feedback join (``store.feedback``) when the database is down, restarting, locked or full.
It is not a ``HousingError``: the writer catches it and spools the rows, the service
answers 503; a command that meets it turns it into its own error. It lives below them all,
so a backend never imports the module that chooses between backends.
"""

from __future__ import annotations


class LogUnavailable(Exception):
    """The request log cannot take rows right now; the message names no secret."""


class RowsRefused(Exception):
    """The database refused a batch for what is in it (a value that breaks a constraint
    or a column's type), not for an outage: the same rows would be refused again. The
    writer narrows the batch down to the refused rows and sets those aside. The message
    names no secret."""

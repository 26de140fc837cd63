"""Where the request log lives: a SQLite file (the default) or a PostgreSQL database.

``parse_log_location(value)`` turns the configured ``serve.request_log`` (a path, or a
``postgresql://`` / ``postgres://`` URL) into a ``LogLocation``. Its ``str()`` (and
``display``) is what every message, log line and page shows: the password (in the URL's
user part or a ``password=`` query parameter) is replaced by ``***``. The raw URL is only
handed to the driver (``store.postgres``), never printed.

A URL is kept as a string throughout: ``Path("postgresql://u:p@h/db")`` would collapse the
``//`` into one slash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from housing_mlops.errors import ConfigError

PG_SCHEMES = ("postgresql", "postgres")
_REDACTED = "***"


def is_log_url(value: str | Path) -> bool:
    """True when ``value`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(value, str) and value.split("://", 1)[0].lower() in PG_SCHEMES


def _redact(url: str) -> tuple[str, str | None]:
    """(the URL with its password replaced by ***, the password or None)."""
    parts = urlsplit(url)
    password = parts.password
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{_REDACTED}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        for key, value in pairs:
            if key.lower() == "password" and value:
                password = password or value
        if any(key.lower() == "password" for key, _ in pairs):
            query = urlencode(
                [(k, _REDACTED if k.lower() == "password" else v) for k, v in pairs],
                safe="*",
                quote_via=quote,
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), password


@dataclass(frozen=True)
class LogLocation:
    """A request log: ``kind`` "sqlite" (``path``) or "postgresql" (a URL, kept private).

    ``str(location)`` and ``repr(location)`` are safe to print (``display``).
    """

    kind: Literal["sqlite", "postgresql"]
    display: str
    path: Path | None = None
    _url: str | None = field(default=None, repr=False)
    _secret: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"LogLocation({self.kind!r}, {self.display!r})"

    @property
    def url(self) -> str:
        """The raw connection URL (PostgreSQL only). Hand it to the driver, never print it."""
        if self._url is None:
            raise ValueError("a SQLite request log has no URL")
        return self._url

    def redact(self, text: str) -> str:
        """``text`` on one line, the password (if any) replaced by ***: for driver errors."""
        if self._url:
            text = text.replace(self._url, self.display)
        if self._secret:
            text = text.replace(self._secret, _REDACTED)
        return " ".join(text.split())


def parse_log_location(value: str | Path | LogLocation) -> LogLocation:
    """The request log named by ``serve.request_log``: a SQLite path or a PostgreSQL URL.

    Raises ConfigError for a URL of another scheme (``mysql://...``) or a PostgreSQL URL
    without a database name.
    """
    if isinstance(value, LogLocation):
        return value
    if isinstance(value, str) and "://" in value:
        scheme = value.split("://", 1)[0].lower()
        try:
            display, secret = _redact(value)
            if "://" not in display:  # urlunsplit drops the // of a URL without a host
                display = display.replace(":", "://", 1)
            parts = urlsplit(value)
            if "," not in parts.netloc:  # libpq's host1:port1,host2:port2 is fine as is
                parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError as exc:
            # Not even parseable: show nothing of it but the scheme (it may hold a password).
            raise ConfigError(
                f"the request log URL {scheme}://*** is malformed ({exc}): use "
                "postgresql://user:password@host:port/database"
            ) from None
        if scheme not in PG_SCHEMES:
            raise ConfigError(
                f"unsupported request log URL {display}: serve.request_log (or "
                "HOUSING_REQUEST_LOG, --request-log) takes a SQLite file path or a "
                "postgresql://user:password@host:port/database URL"
            )
        if not urlsplit(value).path.strip("/"):
            raise ConfigError(
                f"the request log URL {display} names no database: use "
                "postgresql://user:password@host:port/database"
            )
        return LogLocation("postgresql", display, None, value, secret)
    path = Path(value)
    return LogLocation("sqlite", str(path), path)

"""Outbound HTTP: the one module that downloads files, with one client library (httpx).

``download_with_retries`` streams a URL into a file while hashing it: a timeout per
connection and per read, retries with exponential backoff for failures that may pass
(connection errors, timeouts, HTTP 5xx/408/429, a transfer cut short), none for those
that will not (other HTTP errors, a body over the size cap). The cap is checked against
the announced Content-Length before reading and against the bytes received while reading,
so a hostile or broken server cannot fill the disk with an endless body. ``copy_capped``
applies the same cap, hashing and progress to any byte stream (a local file).
``unreachable_reason`` is the quick "does anything answer there?" probe used before
talking to a tracking server.

The load generator (``housing_mlops.traffic``) also uses httpx, but as a client of our
own service, not to download anything: it needs an async client with a connection pool
and must not retry (a retry would distort the load it measures).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from housing_mlops import __version__

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024

# progress(description, bytes_done, bytes_total_or_None), called as bytes arrive.
ProgressHook = Callable[[str, int, int | None], None]


class DownloadFailed(Exception):
    """One source failed; ``retry`` says whether trying the same source again may help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class TooLarge(DownloadFailed):
    """More bytes were announced or sent than the cap allows (never retried)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes", retry=False)
        self.limit = limit


def copy_capped(
    chunks: Iterable[bytes],
    dest: Path,
    total: int | None,
    label: str,
    progress: ProgressHook | None,
    limit: int,
) -> tuple[int, str]:
    """Write ``chunks`` into ``dest`` while hashing; returns (bytes, sha256 hex).

    Raises ``TooLarge`` at once when the announced ``total`` is over ``limit``, and as soon
    as more than ``limit`` bytes have arrived otherwise.
    """
    if total is not None and total > limit:
        raise TooLarge(limit)
    digest = hashlib.sha256()
    done = 0
    if progress:
        progress(label, 0, total)
    with dest.open("wb") as out:
        for chunk in chunks:
            if not chunk:
                continue
            if done + len(chunk) > limit:
                raise TooLarge(limit)
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(label, done, total)
    return done, digest.hexdigest()


def file_chunks(fh: IO[bytes]) -> Iterable[bytes]:
    """The chunks of an open binary file, for ``copy_capped``."""
    return iter(lambda: fh.read(CHUNK_BYTES), b"")


def download_once(
    url: str, dest: Path, timeout: float, progress: ProgressHook | None, limit: int
) -> tuple[int, str]:
    """One attempt to stream ``url`` into ``dest``; returns (bytes, sha256 hex)."""
    import httpx

    # identity: the bytes on disk must be the bytes the checksum was taken of
    headers = {"User-Agent": f"housing-mlops/{__version__}", "Accept-Encoding": "identity"}
    problem = url_problem(url)
    if problem is not None:  # a malformed URL stays malformed: no retries
        raise DownloadFailed(f"malformed URL: {problem}", retry=False)
    label = f"download from {httpx.URL(url).netloc.decode('ascii', 'replace')}"
    size = 0
    total: int | None = None
    received = 0  # bytes of this attempt so far: h11 raises from inside the iteration

    def counted(chunks: Iterable[bytes]) -> Iterable[bytes]:
        nonlocal received
        for chunk in chunks:
            received += len(chunk)
            yield chunk

    try:
        with (
            httpx.Client(timeout=timeout, headers=headers, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                code = response.status_code
                transient = code >= 500 or code in (408, 429)
                raise DownloadFailed(f"HTTP {code} {response.reason_phrase}", retry=transient)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            chunks = counted(response.iter_raw(CHUNK_BYTES))
            size, sha = copy_capped(chunks, dest, total, label, progress, limit)
    except httpx.TimeoutException:
        raise DownloadFailed(f"timed out after {timeout:g}s", retry=True) from None
    except httpx.RemoteProtocolError as exc:
        # The server hung up before the announced length: h11 refuses the short body.
        if total is not None and received < total:
            raise DownloadFailed(
                f"transfer truncated: got {received} of {total} bytes", retry=True
            ) from None
        raise DownloadFailed(f"{type(exc).__name__}: {exc}", retry=True) from None
    except httpx.TransportError as exc:
        raise DownloadFailed(_reason(exc), retry=True) from None
    except OSError as exc:
        raise DownloadFailed(f"{type(exc).__name__}: {exc}", retry=True) from None
    if total is not None and size != total:
        raise DownloadFailed(f"transfer truncated: got {size} of {total} bytes", retry=True)
    return size, sha


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a download address (malformed, not http(s), no host), or None."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return str(exc)
    if parsed.scheme not in ("http", "https"):
        return f"the scheme must be http or https, not {parsed.scheme!r}"
    if not parsed.host:
        return "it names no host"
    return None


def _reason(exc: Exception) -> str:
    """The underlying reason of a transport error (``[Errno 111] Connection refused``)."""
    cause = exc.__cause__ or exc.__context__
    return str(exc) or (str(cause) if cause is not None else type(exc).__name__)


def download_with_retries(
    url: str,
    dest: Path,
    *,
    timeout: float,
    retries: int,
    backoff_s: float,
    limit: int,
    progress: ProgressHook | None = None,
) -> tuple[int, str]:
    """``download_once`` up to ``retries`` times, waiting backoff_s * 2^(n-1) in between.

    The last failure is raised; after several attempts its message says how many.
    """
    for attempt in range(1, retries + 1):
        try:
            return download_once(url, dest, timeout, progress, limit)
        except DownloadFailed as exc:
            if not exc.retry or attempt == retries:
                if retries > 1 and exc.retry:
                    raise DownloadFailed(f"{exc} (after {retries} attempts)", False) from None
                raise
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning(
                "download of %s failed (%s); retry %d/%d in %.1fs",
                url,
                exc,
                attempt,
                retries - 1,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable: retries >= 1")  # pragma: no cover


def file_url_path(url: str) -> Path:
    """The local path of a ``file://`` URL (percent-escapes such as %20 decoded)."""
    import httpx

    return Path(httpx.URL(url).path)


def unreachable_reason(url: str, timeout: float = 5.0) -> str | None:
    """None when something answers a GET of ``url`` (any HTTP status), else why not."""
    import httpx

    try:
        with httpx.Client(timeout=timeout) as client:
            client.get(url)
    except httpx.HTTPError as exc:
        return _reason(exc)
    return None

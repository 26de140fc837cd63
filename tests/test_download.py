"""download.py beyond what `housing fetch` exercises (tests/test_fetch.py): the probe used
before talking to a tracking server, and the size cap on any byte stream."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from housing_mlops import download


class _Answers500(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.send_error(500)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answers500)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/health"
    httpd.shutdown()
    httpd.server_close()


def test_any_http_answer_counts_as_reachable(failing_server: str) -> None:
    assert download.unreachable_reason(failing_server, timeout=5) is None


def test_closed_port_is_unreachable_with_the_reason() -> None:
    reason = download.unreachable_reason("http://127.0.0.1:9/health", timeout=5)
    assert reason is not None and "refused" in reason.lower()


def test_copy_capped_stops_at_the_cap_and_hashes_what_it_wrote(tmp_path: Path) -> None:
    chunks = [b"a" * 400, b"b" * 400]
    size, sha = download.copy_capped(chunks, tmp_path / "ok", None, "x", None, limit=800)
    assert size == 800 and (tmp_path / "ok").read_bytes() == b"a" * 400 + b"b" * 400
    assert sha == hashlib.sha256(b"a" * 400 + b"b" * 400).hexdigest()
    with pytest.raises(download.TooLarge, match="more than 799 bytes"):
        download.copy_capped(chunks, tmp_path / "big", None, "x", None, limit=799)
    with pytest.raises(download.TooLarge):  # announced too large: refused before reading
        download.copy_capped(iter(()), tmp_path / "announced", 10**9, "x", None, limit=799)
    assert not (tmp_path / "announced").exists()

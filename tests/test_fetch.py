"""`housing fetch` against a local HTTP server on 127.0.0.1 (never the internet).

The server serves small archives with the StatLib layout that the tests build, plus
broken variants (HTTP errors, a transfer cut short, the wrong file). After every failure
the tests check what is on disk: no partial file, the previous good copy untouched.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import GOOD, REAL_ROWS, make_archive, sha256
from synthetic import write_config

from housing_mlops import data
from housing_mlops.cli import run
from housing_mlops.config import load_config
from housing_mlops.errors import DataError


@pytest.fixture(autouse=True)
def _no_archive_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI sets $HOUSING_DATA_ARCHIVE for the real-data tests; here it would win over the
    URLs under test (it takes precedence over data.urls by design)."""
    monkeypatch.delenv("HOUSING_DATA_ARCHIVE", raising=False)


OTHER = make_archive(REAL_ROWS[::-1])  # a valid archive, but not the pinned one


class ArchiveServer:
    """A threaded HTTP server on 127.0.0.1 with a few behaviours per path."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.sent: dict[str, int] = {}  # body bytes written per path (endless routes)
        self.routes: dict[str, tuple[str, Any]] = {
            "/good.tgz": ("body", GOOD),
            "/other.tgz": ("body", OTHER),
            "/truncated.tgz": ("truncate", GOOD),
            "/error.tgz": ("status", 500),
            "/missing.tgz": ("status", 404),
            "/slow.tgz": ("sleep", 5.0),
            "/endless.tgz": ("endless", None),
            "/announced-huge.tgz": ("announce", 10**12),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                server.hits.append(self.path)
                kind, arg = server.routes.get(self.path, ("status", 404))
                if kind == "status":
                    self.send_error(arg)
                    return
                if kind == "sleep":
                    time.sleep(arg)
                    with contextlib.suppress(OSError):  # the client has given up by now
                        self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                if kind in ("endless", "announce"):
                    self._stream_forever(announce=arg)
                    return
                if kind == "truncate":
                    # Promise the whole file, send a third of it, then hang up.
                    self.send_header("Content-Length", str(len(arg)))
                    self.end_headers()
                    self.wfile.write(arg[: len(arg) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(arg)))
                self.end_headers()
                self.wfile.write(arg)

            def _stream_forever(self, announce: int | None) -> None:
                """A hostile mirror: bytes until the client hangs up (64 MB at most)."""
                if announce is not None:
                    self.send_header("Content-Length", str(announce))
                self.end_headers()
                chunk = random.Random(1).randbytes(64 * 1024)
                sent = 0
                with contextlib.suppress(OSError):
                    while sent < 64 * 1024 * 1024:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        server.sent[self.path] = sent
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[ArchiveServer]:
    srv = ArchiveServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def hits(server: ArchiveServer) -> list[str]:
    server.hits.clear()
    return server.hits


def make_config(tmp_path: Path, urls: list[str], sha: str = sha256(GOOD), **data_opts: Any) -> Path:
    opts = {"urls": urls, "sha256": sha, "retries": 2, "backoff_s": 0.0, "timeout_s": 5.0}
    return write_config(tmp_path, {"data": {**opts, **data_opts}})


def raw_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "raw"


def leftovers(tmp_path: Path) -> list[str]:
    """Temporary files that a failed fetch must not leave behind."""
    return sorted(p.name for p in raw_dir(tmp_path).glob("*") if p.name.startswith("."))


def snapshot(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(raw_dir(tmp_path).iterdir())}


def seed_good_copy(tmp_path: Path, cfg: Path) -> dict[str, bytes]:
    """A completed fetch from a local file; returns the bytes of everything in data/raw."""
    local = tmp_path / "good.tgz"
    local.write_bytes(GOOD)
    assert run(["-c", str(cfg), "fetch", "--from", str(local)]) == 0
    return snapshot(tmp_path)


def fetch_error(cfg: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    code = run(["-c", str(cfg), "fetch", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4, err
    assert err[-1].startswith("Error: ")
    return err[-1]


# ------------------------------------------------------------------------ success
def test_download_verifies_writes_archive_parquet_and_manifest(
    tmp_path: Path, server: ArchiveServer, hits: list[str]
) -> None:
    settings = load_config(make_config(tmp_path, [server.url("/good.tgz")]))
    seen: list[tuple[int, int | None]] = []
    result = data.fetch(settings, progress=lambda label, done, total: seen.append((done, total)))

    assert hits == ["/good.tgz"]
    assert result["cached"] is False
    assert (raw_dir(tmp_path) / "cal_housing.tgz").read_bytes() == GOOD
    manifest = json.loads((raw_dir(tmp_path) / "manifest.json").read_text())
    assert manifest["source"] == server.url("/good.tgz")
    assert manifest["archive_sha256"] == sha256(GOOD)
    assert manifest["rows"] == len(REAL_ROWS)
    assert manifest["columns"] == data.COLUMNS
    assert manifest["package_version"] == "0.1.0"
    assert manifest["fetched_at"].endswith("+00:00")
    frame = pd.read_parquet(raw_dir(tmp_path) / "california_housing.parquet")
    assert manifest["content_hash"] == data.frame_content_hash(frame) == result["content_hash"]
    first = frame.iloc[0]
    assert first["MedInc"] == pytest.approx(8.3252)
    assert first["AveRooms"] == pytest.approx(880 / 126)
    assert first["AveOccup"] == pytest.approx(322 / 126)
    assert first["MedHouseVal"] == pytest.approx(4.526)
    # The progress hook saw the bytes arrive in several steps, up to the announced total.
    assert len(seen) > 2 and seen[-1] == (len(GOOD), len(GOOD))
    assert leftovers(tmp_path) == []


def test_cached_archive_is_not_downloaded_again_unless_forced(
    tmp_path: Path, server: ArchiveServer, hits: list[str]
) -> None:
    settings = load_config(make_config(tmp_path, [server.url("/good.tgz")]))
    first = data.fetch(settings)
    hits.clear()

    again = data.fetch(settings)
    assert hits == []
    assert again["cached"] is True
    assert again["content_hash"] == first["content_hash"]
    assert again["source"] == first["source"]  # still records where the copy came from
    assert again["fetched_at"] == first["fetched_at"]

    forced = data.fetch(settings, force=True)
    assert hits == ["/good.tgz"]
    assert forced["cached"] is False
    assert forced["content_hash"] == first["content_hash"]


def test_cached_copy_with_wrong_checksum_is_replaced(
    tmp_path: Path, server: ArchiveServer, hits: list[str]
) -> None:
    settings = load_config(make_config(tmp_path, [server.url("/good.tgz")]))
    raw_dir(tmp_path).mkdir(parents=True)
    (raw_dir(tmp_path) / "cal_housing.tgz").write_bytes(OTHER)
    assert data.fetch(settings)["cached"] is False
    assert hits == ["/good.tgz"]
    assert (raw_dir(tmp_path) / "cal_housing.tgz").read_bytes() == GOOD


# ----------------------------------------------------------------------- failures
def test_checksum_mismatch_keeps_previous_good_copy(
    tmp_path: Path, server: ArchiveServer, hits: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config(tmp_path, [server.url("/other.tgz")])
    before = seed_good_copy(tmp_path, cfg)

    line = fetch_error(cfg, capsys, "--force")
    assert line == (
        f"Error: could not fetch {server.url('/other.tgz')}: checksum mismatch: expected sha256 "
        f"{sha256(GOOD)}, got {sha256(OTHER)}; pass `--from PATH` with a local copy of the "
        "archive (or set $HOUSING_DATA_ARCHIVE)"
    )
    assert hits == ["/other.tgz"]  # a wrong file is not retried
    assert snapshot(tmp_path) == before
    assert leftovers(tmp_path) == []


def test_truncated_transfer_is_retried_then_fails_leaving_nothing(
    tmp_path: Path, server: ArchiveServer, hits: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config(tmp_path, [server.url("/truncated.tgz")])
    before = seed_good_copy(tmp_path, cfg)

    line = fetch_error(cfg, capsys, "--force")
    assert f"could not fetch {server.url('/truncated.tgz')}: transfer truncated: got" in line
    assert f"of {len(GOOD)} bytes (after 2 attempts)" in line
    assert hits == ["/truncated.tgz", "/truncated.tgz"]
    assert snapshot(tmp_path) == before
    assert leftovers(tmp_path) == []


def test_server_error_falls_back_to_the_next_url(
    tmp_path: Path, server: ArchiveServer, hits: list[str]
) -> None:
    urls = [server.url("/error.tgz"), server.url("/good.tgz")]
    result = data.fetch(load_config(make_config(tmp_path, urls)))
    assert hits == ["/error.tgz", "/error.tgz", "/good.tgz"]  # 2 attempts, then fallback
    assert result["source"] == server.url("/good.tgz")
    assert (raw_dir(tmp_path) / "cal_housing.tgz").read_bytes() == GOOD


def test_configured_local_mirror_missing_falls_back(
    tmp_path: Path, server: ArchiveServer, hits: list[str]
) -> None:
    urls = [str(tmp_path / "mirror" / "absent.tgz"), server.url("/good.tgz")]
    result = data.fetch(load_config(make_config(tmp_path, urls)))
    assert result["source"] == server.url("/good.tgz")
    assert hits == ["/good.tgz"]


def test_all_urls_failing_names_each_url_and_suggests_from(
    tmp_path: Path, server: ArchiveServer, hits: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [server.url("/error.tgz"), server.url("/missing.tgz")]
    cfg = make_config(tmp_path, urls)
    line = fetch_error(cfg, capsys)
    assert line == (
        f"Error: could not fetch the archive from any of 2 sources: {urls[0]}: "
        f"HTTP 500 Internal Server Error (after 2 attempts); {urls[1]}: HTTP 404 Not Found; "
        "pass `--from PATH` with a local copy of the archive (or set $HOUSING_DATA_ARCHIVE)"
    )
    assert hits == ["/error.tgz", "/error.tgz", "/missing.tgz"]  # a 404 is not retried
    assert not (raw_dir(tmp_path) / "cal_housing.tgz").exists()
    assert leftovers(tmp_path) == []


def test_unreachable_host_names_the_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 on 127.0.0.1 (discard) is closed here: the connection is refused at once.
    url = "http://127.0.0.1:9/cal_housing.tgz"
    line = fetch_error(make_config(tmp_path, [url], retries=1), capsys)
    assert line.startswith(f"Error: could not fetch {url}: ")
    assert line.endswith(
        "pass `--from PATH` with a local copy of the archive (or set $HOUSING_DATA_ARCHIVE)"
    )


def test_slow_server_times_out(tmp_path: Path, server: ArchiveServer, hits: list[str]) -> None:
    cfg = make_config(tmp_path, [server.url("/slow.tgz")], retries=1, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(DataError, match=r"/slow.tgz: timed out after 0.3s"):
        data.fetch(load_config(cfg))
    assert time.monotonic() - started < 3.0  # the server would answer only after 5 s
    assert leftovers(tmp_path) == []


def test_endless_body_is_cut_off_at_the_size_cap(
    tmp_path: Path, server: ArchiveServer, hits: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # No Content-Length, and the body never ends: only the cap stops the download.
    cap = 1_000_000
    cfg = make_config(tmp_path, [server.url("/endless.tgz")], max_archive_bytes=cap)
    line = fetch_error(cfg, capsys)
    assert line.startswith(
        f"Error: could not fetch {server.url('/endless.tgz')}: more than {cap} bytes "
        "(data.max_archive_bytes): not the archive"
    )
    assert hits == ["/endless.tgz"]  # a body that is too large is not retried
    assert leftovers(tmp_path) == []
    assert not (raw_dir(tmp_path) / "cal_housing.tgz").exists()
    # The client hung up near the cap (socket buffers hold a few MB), not at 64 MB.
    deadline = time.monotonic() + 10
    while server.sent.get("/endless.tgz", 0) < cap and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cap <= server.sent["/endless.tgz"] < 32 * 1024 * 1024


def test_announced_size_over_the_cap_is_refused_before_reading(
    tmp_path: Path, server: ArchiveServer, hits: list[str]
) -> None:
    cfg = make_config(tmp_path, [server.url("/announced-huge.tgz")], max_archive_bytes=500_000)
    with pytest.raises(DataError, match=r"more than 500000 bytes \(data.max_archive_bytes\)"):
        data.fetch(load_config(cfg))
    assert hits == ["/announced-huge.tgz"]
    assert leftovers(tmp_path) == []


def test_default_cap_admits_the_real_archive_size() -> None:
    # The StatLib archive is 441,963 bytes; the default cap leaves about 10x headroom.
    from housing_mlops.config import DataConfig

    assert 4_000_000 <= DataConfig().max_archive_bytes <= 10_000_000


@pytest.mark.parametrize("case", ["bad-from", "checksum-mismatch", "unreachable", "too-large"])
def test_failed_fetch_leaves_no_empty_data_folder(
    tmp_path: Path,
    server: ArchiveServer,
    hits: list[str],
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    urls = {
        "bad-from": ["http://127.0.0.1:9/never-used"],
        "checksum-mismatch": [server.url("/other.tgz")],
        "unreachable": ["http://127.0.0.1:9/cal_housing.tgz"],
        "too-large": [server.url("/endless.tgz")],
    }[case]
    cfg = make_config(tmp_path, urls, retries=1, max_archive_bytes=1_000_000)
    args = ["--from", str(tmp_path / "typo.tgz")] if case == "bad-from" else []
    fetch_error(cfg, capsys, *args)
    # Neither data/raw/ nor data/ was there before; the failed run leaves neither.
    assert not (tmp_path / "data").exists()


def test_failed_fetch_keeps_a_folder_that_was_already_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw_dir(tmp_path).mkdir(parents=True)
    cfg = make_config(tmp_path, ["http://127.0.0.1:9/cal_housing.tgz"], retries=1)
    fetch_error(cfg, capsys)
    assert raw_dir(tmp_path).is_dir() and list(raw_dir(tmp_path).iterdir()) == []


# --------------------------------------------------------------- offline routes
def test_from_local_file_needs_no_network(
    tmp_path: Path, server: ArchiveServer, hits: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "mirror" / "archive.tgz"
    local.parent.mkdir()
    local.write_bytes(GOOD)
    cfg = make_config(tmp_path, [server.url("/good.tgz")])
    capsys.readouterr()
    assert run(["-c", str(cfg), "fetch", "--from", str(local), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert hits == []
    assert result["source"] == str(local)
    assert result["rows"] == len(REAL_ROWS)
    assert result["cached"] is False
    assert (raw_dir(tmp_path) / "cal_housing.tgz").read_bytes() == GOOD


def test_file_url_and_env_variable(
    tmp_path: Path, server: ArchiveServer, hits: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "archive.tgz"
    local.write_bytes(GOOD)
    settings = load_config(make_config(tmp_path, [server.url("/good.tgz")]))

    result = data.fetch(settings, source=local.as_uri())
    assert result["source"] == str(local)

    monkeypatch.setenv("HOUSING_DATA_ARCHIVE", str(tmp_path / "absent.tgz"))
    with pytest.raises(DataError, match=r"^\$HOUSING_DATA_ARCHIVE path not found: .*absent"):
        data.fetch(settings, force=True)
    # --from beats the environment variable.
    assert data.fetch(settings, source=str(local), force=True)["source"] == str(local)
    monkeypatch.setenv("HOUSING_DATA_ARCHIVE", server.url("/good.tgz"))
    assert data.fetch(settings, force=True)["source"] == server.url("/good.tgz")
    assert hits == ["/good.tgz"]


def test_from_missing_path_is_a_data_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config(tmp_path, ["http://127.0.0.1:9/never-used"])
    missing = tmp_path / "nope.tgz"
    assert fetch_error(cfg, capsys, "--from", str(missing)) == (
        f"Error: --from path not found: {missing}"
    )


def test_from_missing_path_is_refused_even_with_a_cached_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config(tmp_path, ["http://127.0.0.1:9/never-used"])
    before = seed_good_copy(tmp_path, cfg)
    assert fetch_error(cfg, capsys, "--from", str(tmp_path / "typo.tgz")) == (
        f"Error: --from path not found: {tmp_path / 'typo.tgz'}"
    )
    assert fetch_error(cfg, capsys, "--from", str(tmp_path)) == (
        f"Error: --from path is a folder, not the archive: {tmp_path}"
    )
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------ broken archives
@pytest.mark.parametrize(
    "blob",
    [b"this is not a gzip file at all", GOOD[: len(GOOD) // 2]],
    ids=["not-gzip", "cut-in-half"],
)
def test_corrupt_archive_with_matching_checksum_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], blob: bytes
) -> None:
    # The checksum is pinned to the broken bytes, so only the archive check can catch it.
    cfg = make_config(tmp_path, ["http://127.0.0.1:9/never-used"], sha=sha256(blob))
    good = tmp_path / "good.tgz"
    good.write_bytes(GOOD)
    raw_dir(tmp_path).mkdir(parents=True)
    (raw_dir(tmp_path) / "cal_housing.tgz").write_bytes(GOOD)
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(blob)

    line = fetch_error(cfg, capsys, "--from", str(broken))
    assert line.startswith(f"Error: archive {broken} is corrupt or truncated (")
    assert line.endswith("); check that source")
    assert (raw_dir(tmp_path) / "cal_housing.tgz").read_bytes() == GOOD
    assert leftovers(tmp_path) == []


def test_archive_without_the_data_member_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = make_archive(member="CaliforniaHousing/other.data")
    cfg = make_config(tmp_path, ["http://127.0.0.1:9/never-used"], sha=sha256(blob))
    local = tmp_path / "a.tgz"
    local.write_bytes(blob)
    line = fetch_error(cfg, capsys, "--from", str(local))
    assert line == (
        f"Error: archive {local} has no CaliforniaHousing/cal_housing.data: it is not the "
        "StatLib California Housing archive"
    )
    assert not (raw_dir(tmp_path) / "cal_housing.tgz").exists()


def test_unwritable_raw_folder_is_a_data_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file where the folder should be (works even when the tests run as root).
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    cfg = make_config(tmp_path, ["http://127.0.0.1:9/never-used"])
    line = fetch_error(cfg, capsys)
    assert line == (
        f"Error: cannot write to {raw_dir(tmp_path)}: a file is in the way; fix paths in the config"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [("http://[::1", "Invalid port: ':1'"), ("https://", "it names no host")],
)
def test_a_malformed_from_url_is_exit_4_at_once_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    problem: str,
) -> None:
    def no_retry(seconds: float) -> None:
        raise AssertionError(f"a malformed URL was retried (back-off {seconds}s)")

    monkeypatch.setattr("housing_mlops.download.time.sleep", no_retry)
    cfg = make_config(tmp_path, ["http://127.0.0.1:9/never-used"], retries=3, backoff_s=1.0)
    assert fetch_error(cfg, capsys, "--from", url) == (
        f"Error: --from URL {url!r} is malformed: {problem}"
    )
    assert not raw_dir(tmp_path).exists()


def test_a_malformed_configured_url_falls_back_to_the_next_at_once(
    tmp_path: Path, server: ArchiveServer, hits: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("housing_mlops.download.time.sleep", lambda s: pytest.fail("retried"))
    cfg = make_config(tmp_path, ["https://", server.url("/good.tgz")], retries=3)
    assert run(["-c", str(cfg), "fetch"]) == 0
    assert hits == ["/good.tgz"]
    assert (raw_dir(tmp_path) / "cal_housing.tgz").read_bytes() == GOOD


def test_an_empty_from_is_a_usage_error_not_the_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `housing fetch --from "$ARCHIVE"` with $ARCHIVE unset fell back to
    # $HOUSING_DATA_ARCHIVE or the configured URLs without a word.
    monkeypatch.setenv("HOUSING_DATA_ARCHIVE", str(tmp_path / "elsewhere.tgz"))
    config = write_config(tmp_path)
    code = run(["--config", str(config), "fetch", "--from", ""])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.strip().splitlines() == [
        "Error: --from is empty: give the archive's path or URL",
        "Try 'housing fetch -h' for help.",
    ]
    assert not (tmp_path / "data").exists()  # nothing fetched or written

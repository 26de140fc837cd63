"""files.py (atomic writes, file digest) and timestamps.py (the one time format)."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path

import pytest

from housing_mlops import files, timestamps


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    files.atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_written_file_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        files.atomic_write(tmp_path / "a", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    blob = os.urandom(300_000)
    (tmp_path / "blob").write_bytes(blob)
    assert files.file_sha256(tmp_path / "blob") == hashlib.sha256(blob).hexdigest()


def test_one_timestamp_format_reads_back_to_the_same_second() -> None:
    text = timestamps.iso_utc(1_767_225_600.7)  # 2026-01-01T00:00:00.7Z
    assert text == "2026-01-01T00:00:00+00:00"
    assert datetime.fromisoformat(text).timestamp() == 1_767_225_600
    assert timestamps.iso_utc_ms(1_767_225_600_700) == text
    assert timestamps.iso_utc_ms(None) is None
    assert timestamps.readable_utc(1_767_225_600) == "2026-01-01 00:00:00 UTC"
    assert timestamps.readable_utc(None) == "–"

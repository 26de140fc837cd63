"""The request-log spool (store.spool): rows wait in order in a local file, a stop with rows
leaves the file, and a writer that starts later adopts what an ended writer left (a real
process killed with SIGKILL), never what a live one holds."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import spooled_rows

from housing_mlops.store.rows import ROW_COLUMNS
from housing_mlops.store.spool import Spool


def _rows(start: int, n: int) -> list[tuple[Any, ...]]:
    """Rows in ROW_COLUMNS order whose request_id says their position."""
    base: dict[str, Any] = dict.fromkeys(ROW_COLUMNS)
    out = []
    for i in range(start, start + n):
        values = {**base, "ts": 1_800_000_000.0 + i, "request_id": f"r{i:06d}", "status": 200}
        values["row_index"] = 0
        values["prediction"] = i / 7.0  # a float that must come back bit for bit
        out.append(tuple(values[c] for c in ROW_COLUMNS))
    return out


RID = ROW_COLUMNS.index("request_id")


def test_rows_come_back_in_order_and_exactly(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "host:1")
    spool.open()
    try:
        spool.append(_rows(0, 3))
        spool.append(_rows(3, 4))
        assert spool.rows == 7
        seq, head = spool.head(5)
        assert head == _rows(0, 5)
        spool.remove_through(seq, len(head))
        assert spool.rows == 2
        _, rest = spool.head(100)
        assert rest == _rows(5, 2)
    finally:
        spool.close()


def test_an_empty_spool_leaves_no_file_and_one_with_rows_stays(tmp_path: Path) -> None:
    empty = Spool(tmp_path, "a")
    empty.open()
    empty.close()
    assert list(tmp_path.iterdir()) == []
    kept = Spool(tmp_path, "b")
    kept.open()
    kept.append(_rows(0, 10))
    kept.close()
    assert kept.path.exists() and spooled_rows(tmp_path) == 10


def test_a_live_writers_spool_is_not_adopted(tmp_path: Path) -> None:
    live = Spool(tmp_path, "live")
    live.open()
    live.append(_rows(0, 5))
    other = Spool(tmp_path, "other")
    other.open()
    try:
        assert other.adopt_orphans() == 0
        assert live.path.exists() and live.rows == 5
    finally:
        other.close()
        live.close()


def test_an_orphan_whose_lock_cannot_be_opened_is_left_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An ended writer's spool whose lock file cannot be opened (another user's file with
    mode 0600 on a shared volume; here a directory in its place, since the tests run as
    root, who opens any file): its rows are left alone, and one warning line says why,
    however often the folder is looked at. It used to be skipped without a word, its
    rows never replayed."""
    gone = Spool(tmp_path, "gone")
    gone.open()
    gone.append(_rows(0, 10))
    gone.close()  # an ended writer: its files stay
    gone.lock_path.unlink()
    gone.lock_path.mkdir()
    other = Spool(tmp_path, "other")
    other.open()
    try:
        with caplog.at_level(logging.WARNING, logger="housing_mlops.store.spool"):
            assert other.adopt_orphans() == 0
            assert other.adopt_orphans() == 0
    finally:
        other.close()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "housing_mlops.store.spool"]
    assert line.startswith(f"request-log spool: cannot open the lock file {gone.lock_path}")
    assert "\n" not in line
    assert gone.path.exists() and spooled_rows(tmp_path) == 10


KILLED_WRITER = """
import sys, time
from housing_mlops.store.rows import ROW_COLUMNS
from housing_mlops.store.spool import Spool
spool = Spool(sys.argv[1], "doomed:42")
spool.open()
for start in range(0, 1000, 100):
    spool.append([
        tuple(f"r{i:06d}" if c == "request_id" else (200 if c == "status" else None)
              for c in ROW_COLUMNS)
        for i in range(start, start + 100)
    ])
print("spooled", flush=True)
time.sleep(600)
"""


def test_rows_of_a_killed_writer_are_adopted_in_order(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "spooled"
        heir = Spool(tmp_path, "heir")
        heir.open()
        assert heir.adopt_orphans() == 0, "adopted the spool of a writer still alive"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Its lock died with it: the rows are adopted, oldest first, and its files are gone.
        deadline = time.monotonic() + 10
        adopted = heir.adopt_orphans()
        while not adopted and time.monotonic() < deadline:
            time.sleep(0.05)
            adopted = heir.adopt_orphans()
        assert adopted == 1000
        _, rows = heir.head(5000)
        assert [r[RID] for r in rows] == [f"r{i:06d}" for i in range(1000)]
        assert sorted(p.name for p in tmp_path.iterdir() if "doomed" in p.name) == []
        heir.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

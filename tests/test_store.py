"""The request log's owner (store.py): what it does with a path that is not a database.

The window readers and drift tables are covered in test_drift.py; here, every way in
(the service's writer, drift's read-write connection, the report's read-only one) refuses
a file or directory that is not a SQLite database with one DataError, and leaves it alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from housing_mlops import store
from housing_mlops.errors import DataError

OPENERS: dict[str, Callable[[Path], Any]] = {
    "open_db (serve)": store.open_db,
    "connect (drift)": store.connect,
    "open_readonly (report)": store.open_readonly,
    "writer start (serve)": lambda path: store.RequestLogWriter(path).start(),
}


def make(path: Path, kind: str) -> bytes | None:
    if kind == "directory":
        path.mkdir()
        return None
    content = {
        "text": b"ts,request_id,prediction\n1.0,abc,2.5\n",
        "random bytes": os.urandom(4096),
        "corrupt sqlite": b"SQLite format 3\x00" + os.urandom(4096),
    }[kind]
    path.write_bytes(content)
    return content


@pytest.mark.parametrize("kind", ["text", "random bytes", "corrupt sqlite", "directory"])
@pytest.mark.parametrize("opener", list(OPENERS))
def test_every_opener_refuses_what_is_not_a_database_and_leaves_it(
    tmp_path: Path, kind: str, opener: str
) -> None:
    path = tmp_path / "requests.db"
    content = make(path, kind)
    with pytest.raises(DataError) as info:
        OPENERS[opener](path)
    message = str(info.value)
    assert message.startswith(f"the request log {path} ")
    assert "not a SQLite database" in message or "not a usable SQLite database" in message
    assert "serve.request_log" in message
    if content is not None:
        assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.db"]


def test_missing_and_empty_logs_are_still_fine(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    assert store.connect(missing) is None and store.open_readonly(missing) is None
    assert not store.check_request_log(missing) and not missing.exists()
    empty = tmp_path / "empty.db"
    empty.touch()  # SQLite treats an empty file as an empty database
    assert store.check_request_log(empty)
    db = store.open_db(empty)
    store.insert_requests(db, [{"ts": 1.0, "request_id": "a", "row_index": 0, "status": 200}])
    db.close()
    assert store.check_request_log(empty)

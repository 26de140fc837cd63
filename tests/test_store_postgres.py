"""The PostgreSQL request log, on a real server (initdb/pg_ctl, conftest's ``postgres``).

What a user of several replicas notices: the schema appears once however many replicas
start at the same moment; rows written through the sink come back from the readers in
order with the replica's name; an outage is ``LogUnavailable`` (the caller keeps the
rows) and the next write reconnects; a bad URL, an unreachable host or a wrong password
is a ConfigError within seconds, and the password is never in any message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from housing_mlops import store
from housing_mlops.columns import FEATURES
from housing_mlops.errors import ConfigError

pytestmark = pytest.mark.slow


def _row(i: int, *, version: str = "1", status: int = 200, instance: str = "a") -> Any:
    return store.row_values(
        store.LoggedRequest(
            ts=1_700_000_000.0 + 30 * i,  # 3,000 rows span midnight UTC
            request_id=f"req-{i}",
            row_index=0,
            model_name="m",
            model_version=version if status == 200 else None,
            features=[float(i + k) for k in range(len(FEATURES))] if status == 200 else None,
            prediction=0.5 + i / 1000 if status == 200 else None,
            latency_ms=1.0 + i % 7,
            status=status,
            error=None if status == 200 else "bad body",
            instance=instance,
        )
    )


def _psql(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql.encode())
        return cursor.fetchall() if cursor.description else []


# ------------------------------------------------------------------ the location
def test_a_url_is_parsed_and_printed_without_its_password() -> None:
    url = "postgresql://app:pa%3Ass@db.internal:5433/requests?sslmode=require"
    location = store.parse_log_location(url)
    assert location.kind == "postgresql"
    assert str(location) == "postgresql://app:***@db.internal:5433/requests?sslmode=require"
    assert "pa%3Ass" not in repr(location) and "pa%3Ass" not in f"{location}"
    assert location.url == url  # the raw URL goes to the driver only
    query = store.parse_log_location("postgres://app@h/db?password=hunter2")
    assert "hunter2" not in str(query) and str(query).endswith("password=***")
    several = store.parse_log_location("postgresql://app:pw1@h1:5432,h2:5433/db")
    assert str(several) == "postgresql://app:***@h1:5432,h2:5433/db"  # libpq's multi-host
    sqlite = store.parse_log_location(Path("data/requests.db"))
    assert sqlite.kind == "sqlite" and sqlite.path == Path("data/requests.db")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mysql://u:topsecret@h/db", "unsupported request log URL mysql://u:***@h/db"),
        ("postgresql://u:topsecret@h:5432", "names no database"),
        # No host either: the URL is shown as typed, not as "postgresql:".
        ("postgresql://", "the request log URL postgresql:// names no database"),
        ("postgres:///?password=topsecret", "URL postgres:///?password=*** names no database"),
        ("postgresql://u:topsecret@[::1:5432/db", "postgresql://*** is malformed"),
        ("postgresql://u:topsecret@h:port/db", "postgresql://*** is malformed"),
    ],
)
def test_a_url_that_cannot_be_a_log_is_a_config_error(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        store.parse_log_location(value)
    assert "topsecret" not in str(err.value)


# -------------------------------------------------------------- schema and start-up
def test_replicas_starting_at_once_on_an_empty_database_make_one_schema(postgres: Any) -> None:
    # Six processes call create_log at the same wall-clock instant, on three fresh
    # databases in turn: without the advisory lock, concurrent CREATE TABLE IF NOT EXISTS
    # fail on the system catalogs (about every other round on this machine).
    urls = [postgres.create_database("race") for _ in range(3)]
    start_at = time.time() + 2.0
    code = textwrap.dedent(
        f"""
        import os, time
        from housing_mlops import store
        for i, url in enumerate(os.environ["LOG_URLS"].split()):
            time.sleep(max(0.0, {start_at!r} + i - time.time()))
            store.create_log(url)
        """
    )
    env = {**os.environ, "LOG_URLS": " ".join(urls)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0] * 6, results
    for url in urls:
        assert _psql(url, "SELECT version FROM schema_version") == [(store.SCHEMA_VERSION,)]
    pg_url = urls[0]
    tables = {
        r[0]
        for r in _psql(
            pg_url,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        )
    }
    assert tables == {
        "requests",
        "drift_runs",
        "drift_scores",
        "drift_references",
        "feedback",
        "schema_version",
    }
    columns = [
        r[0]
        for r in _psql(
            pg_url,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'requests' "
            "ORDER BY ordinal_position",
        )
    ]
    assert columns == ["id", *store.ROW_COLUMNS]


def test_starting_a_replica_does_not_wait_for_a_long_read(pg_url: str) -> None:
    # A drift query over a big window holds a share lock on `requests` for seconds; a
    # replica starting (or its writer reconnecting) meanwhile must not queue behind it,
    # which an ALTER TABLE would, and every other replica's inserts behind that.
    import threading

    import psycopg

    store.create_log(pg_url)
    with psycopg.connect(pg_url) as reader:
        reader.execute(b"LOCK TABLE requests IN ACCESS SHARE MODE")  # as a long SELECT does
        done = threading.Event()

        def start_replica() -> None:
            store.create_log(pg_url)
            done.set()

        worker = threading.Thread(target=start_replica)
        worker.start()
        try:
            assert done.wait(10), "create_log waited for the reader's lock"
            sink = store.open_sink(pg_url)
            try:
                sink.write([_row(0)])  # inserts do not wait for readers either
            finally:
                sink.close()
        finally:
            reader.rollback()
            worker.join(30)


def test_a_version_1_table_gets_the_newer_columns(pg_url: str) -> None:
    # The layout before replicas and challengers: no `instance`, `role` or shadow columns.
    text = ("request_id", "model_name", "model_version", "error")
    added = ("instance", "role", "shadow_version", "shadow_prediction")
    columns = ", ".join(
        f'"{c}" {"TEXT" if c in text else "FLOAT8"}' for c in store.ROW_COLUMNS if c not in added
    )
    _psql(pg_url, f"CREATE TABLE requests (id BIGSERIAL PRIMARY KEY, {columns})")
    _psql(pg_url, "INSERT INTO requests (ts, request_id, status) VALUES (1, 'old', 200)")
    store.create_log(pg_url)
    assert _psql(pg_url, f"SELECT request_id, {', '.join(added)} FROM requests") == [
        ("old", None, None, None, None)
    ]
    assert _psql(pg_url, "SELECT MAX(version) FROM schema_version") == [(store.SCHEMA_VERSION,)]
    _psql(
        pg_url,
        "INSERT INTO feedback (request_id, row_index, actual, received_at) "
        "VALUES ('old', 0, 2.5, 3)",
    )
    db = store.open_readonly(pg_url)
    assert db is not None
    try:
        got = store.labelled_rows(db)
    finally:
        db.close()
    assert got.actual.tolist() == [2.5] and got.role.tolist() == [None]


def test_a_log_written_by_a_newer_release_is_refused(pg_url: str) -> None:
    store.create_log(pg_url)
    _psql(pg_url, "INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(ConfigError, match="schema version 99, newer"):
        store.create_log(pg_url)


@pytest.mark.parametrize("fault", ["wrong password", "refused port", "missing database"])
def test_a_database_that_cannot_be_reached_is_a_config_error_within_seconds(
    fault: str, postgres: Any
) -> None:
    url = {
        "wrong password": postgres.url().replace(postgres.password, "not-the-password"),
        "refused port": postgres.url().replace(f":{postgres.port}/", ":1/"),
        "missing database": postgres.url("no_such_db"),
    }[fault]
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        store.create_log(url)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "\n" not in message and "cannot connect to the request log postgresql://" in message
    assert postgres.password not in message and "not-the-password" not in message
    assert ":***@127.0.0.1" in message


def test_a_server_that_never_answers_is_a_config_error_after_the_connect_timeout() -> None:
    # A port that accepts connections (the kernel's backlog) but never says a word: the
    # hang a firewall or a stopped VM gives. Bounded by the 5 s connect timeout.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://app:n0-answer@127.0.0.1:{silent.getsockname()[1]}/db"
        started = time.monotonic()
        with pytest.raises(ConfigError, match="timeout") as err:
            store.create_log(url)
        took = time.monotonic() - started
    assert 4 < took < 10, took
    assert "n0-answer" not in str(err.value) and "app:***@127.0.0.1" in str(err.value)


# ------------------------------------------------------------------ sink and readers
def test_the_sink_writes_in_order_and_an_outage_is_log_unavailable(postgres: Any) -> None:
    url = postgres.create_database()
    store.create_log(url)
    sink = store.open_sink(url)
    try:
        sink.write([_row(i) for i in range(100)])
        with postgres.down():
            with pytest.raises(store.LogUnavailable) as err:
                sink.write([_row(i) for i in range(100, 200)])
            assert postgres.password not in str(err.value)
            with pytest.raises(store.LogUnavailable):  # still down: fails again, fast
                sink.write([_row(200)])
        sink.write([_row(i) for i in range(100, 200)])  # reconnects by itself
    finally:
        sink.close()
    rows = _psql(url, "SELECT request_id, instance FROM requests ORDER BY id")
    assert [r[0] for r in rows] == [f"req-{i}" for i in range(200)]
    assert {r[1] for r in rows} == {"a"}


def test_a_write_the_database_cannot_finish_is_cancelled_and_log_unavailable(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A migration (or anything) holding the table: the writer must not wait forever.
    import psycopg

    from housing_mlops.store import postgres as pg

    monkeypatch.setattr(pg, "STATEMENT_TIMEOUT_MS", 500)
    store.create_log(pg_url)
    sink = store.open_sink(pg_url)
    try:
        with psycopg.connect(pg_url) as locker:
            locker.execute(b"LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(store.LogUnavailable, match="statement timeout"):
                sink.write([_row(0)])
            assert time.monotonic() - started < 5
            locker.rollback()
        sink.write([_row(0)])  # the lock gone, the same rows go in
    finally:
        sink.close()
    assert _psql(pg_url, "SELECT request_id FROM requests") == [("req-0",)]


def test_a_write_waiting_for_a_locked_table_gives_up_after_the_lock_timeout(
    pg_url: str,
) -> None:
    """A table locked for longer (VACUUM FULL, a migration): the write gives up after the
    lock timeout (2 s), so its rows go to the spool and a stop does not wait for the lock;
    it used to wait out the 30 s statement timeout."""
    import psycopg

    store.create_log(pg_url)
    sink = store.open_sink(pg_url)
    try:
        with psycopg.connect(pg_url) as locker:
            locker.execute(b"LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(store.LogUnavailable, match="lock timeout"):
                sink.write([_row(0)])
            locker.rollback()
        sink.write([_row(0)])
    finally:
        sink.close()
    assert _psql(pg_url, "SELECT request_id FROM requests") == [("req-0",)]


def test_the_services_own_queries_give_up_on_a_locked_table(pg_url: str) -> None:
    """The service's bounded sessions (POST /feedback's labels, /metrics' drift gauges) on
    a locked table: LogUnavailable (a 503, the gauges left out) instead of a wait for the
    lock."""
    import psycopg

    store.create_log(pg_url)
    bound = store.SERVICE_STATEMENT_TIMEOUT_MS
    label = [("req-0", 0, 1.0)]
    with psycopg.connect(pg_url) as locker:
        locker.execute(b"LOCK TABLE requests, feedback, drift_runs IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(store.LogUnavailable, match="lock timeout"):
            store.apply_feedback(
                pg_url, label, source="api", all_or_nothing=False, statement_timeout_ms=bound
            )
        with pytest.raises(store.LogUnavailable, match="lock timeout"):
            store.read_latest_drift_run(pg_url, statement_timeout_ms=bound)
        locker.rollback()
    assert store.read_latest_drift_run(pg_url, statement_timeout_ms=bound) is None
    result = store.apply_feedback(
        pg_url, label, source="api", all_or_nothing=False, statement_timeout_ms=bound
    )
    assert result.unknown == 1


def test_a_write_to_a_server_that_stopped_answering_fails_and_keeps_the_rows(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's backend frozen (SIGSTOP here; a server stalled on its disk, or a
    partition after the data was acknowledged, look the same to the client): the kernel
    still acknowledges, so neither TCP_USER_TIMEOUT nor the server's statement_timeout
    ends the write. It used to wait for ever, rows piling up in the writer's memory until
    its queue dropped them, never reaching the spool."""
    import signal
    import threading

    import psycopg

    from housing_mlops.store import postgres as pg

    monkeypatch.setattr(pg, "STATEMENT_TIMEOUT_MS", 500)
    store.create_log(pg_url)
    sink = store.open_sink(pg_url)
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            sink.write([_row(1)])
        except BaseException as exc:  # noqa: BLE001 - looked at below
            outcome.append(exc)
        else:
            outcome.append(None)

    sink.write([_row(0)])  # connected
    with psycopg.connect(pg_url, autocommit=True) as conn:
        backends = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'housing-mlops'"
            )
        ]
    assert backends
    for pid in backends:
        os.kill(pid, signal.SIGSTOP)
    try:
        writer = threading.Thread(target=write, daemon=True)
        started = time.monotonic()
        writer.start()
        writer.join(30)
        stuck = writer.is_alive()
        elapsed = time.monotonic() - started
    finally:
        for pid in backends:
            os.kill(pid, signal.SIGCONT)
    writer.join(30)
    assert not stuck, "the write waited for a server that does not answer"
    assert isinstance(outcome[0], store.LogUnavailable)
    assert elapsed < 20
    try:
        sink.write([_row(1)])  # the server back: the same rows go in, once
    finally:
        sink.close()
    assert _psql(pg_url, "SELECT request_id FROM requests ORDER BY id") == [
        ("req-0",),
        ("req-1",),
    ]


def test_a_nul_character_does_not_poison_the_batch(pg_url: str) -> None:
    store.create_log(pg_url)
    sink = store.open_sink(pg_url)
    try:
        bad = list(_row(0, status=422))
        bad[store.ROW_COLUMNS.index("error")] = "bad \x00 body"
        sink.write([tuple(bad), _row(1)])
    finally:
        sink.close()
    assert _psql(pg_url, "SELECT error FROM requests ORDER BY id") == [
        ("bad \ufffd body",),
        (None,),
    ]


def test_readers_give_the_same_answers_over_postgresql_and_sqlite(
    pg_url: str, tmp_path: Path
) -> None:
    rows = [
        _row(i, version="2" if i % 5 == 0 else "1", status=422 if i % 11 == 0 else 200)
        for i in range(3000)
    ]
    sqlite_path = tmp_path / "requests.db"
    for where in (sqlite_path, pg_url):
        sink = store.open_sink(where)
        sink.write(rows)
        sink.close()
    answers = []
    for where in (sqlite_path, pg_url):
        db = store.open_readonly(where)
        assert db is not None
        try:
            counts = store.window_counts(db, 1_700_000_000.0, 1_700_100_000.0)
            sample = store.window_sample(
                db, 1_700_000_000.0, 1_700_100_000.0, "1", [*FEATURES, "prediction"], 0.3
            )
            stats = store.serving_stats(db, sample_rows=1000)
        finally:
            db.close()
        answers.append((counts, sample, stats))
    (c1, s1, t1), (c2, s2, t2) = answers
    assert c1 == c2 and [c["model_version"] for c in c1] == ["1", "2"]
    assert 0 < s1["MedInc"].size < 2400
    for column in s1:
        assert s1[column].tolist() == s2[column].tolist()  # the same sampled rows, exactly
    preds1, preds2 = t1.pop("predictions"), t2.pop("predictions")
    assert t1 == t2 and sorted(preds1.tolist()) == sorted(preds2.tolist())
    assert [d["day"] for d in t1["per_day"]] == ["2023-11-14", "2023-11-15"]


def test_drift_history_round_trips_over_postgresql(pg_url: str) -> None:
    store.create_log(pg_url)
    db = store.open_log(pg_url, create=False)
    assert db is not None
    try:
        first = store.save_drift_run(db, {"verdict": "ok", "scores": [], "created_at": 10.0})
        second = store.save_drift_run(
            db,
            {
                "verdict": "drift",
                "created_at": 20.0,
                "drifting_features": ["MedInc"],
                "scores": [{"feature": "MedInc", "psi": 0.4, "wasserstein_norm": 0.2, "hist": [1]}],
            },
        )
        store.cache_reference(db, "uri", "m", "1", "run", {"v": 1})
        store.cache_reference(db, "uri", "m", "1", "run", {"v": 2})  # replaced, not doubled
        assert second > first
        latest = store.latest_drift_run(db)
        assert latest is not None and latest["id"] == second
        assert latest["drifting_features"] == ["MedInc"] and latest["scores"][0]["hist"] == [1]
        assert [r["id"] for r in store.drift_history(db)] == [second, first]
        assert store.drift_score_history(db, [first, second]) == {"MedInc": [(20.0, 0.2)]}
        assert store.cached_reference(db, "uri", "m", "1") == {"v": 2}
    finally:
        db.close()


def test_readers_see_an_empty_database_as_no_log(pg_url: str) -> None:
    assert store.open_log(pg_url, create=False) is None  # drift never creates a schema
    assert store.check_request_log(pg_url) is False
    db = store.open_readonly(pg_url)
    assert db is not None
    try:
        assert store.serving_stats(db)["rows"] == 0 and store.latest_drift_run(db) is None
    finally:
        db.close()

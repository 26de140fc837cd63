"""Scale-out for real: several `housing serve` replicas on one PostgreSQL request log.

Every test starts real `housing serve` processes (real uvicorn, real HTTP on loopback)
writing to a real PostgreSQL server (the session's ``postgres`` fixture, initdb/pg_ctl),
drives them with concurrent clients from threads, and then counts in the database:

- three replicas (one of them with two uvicorn workers) under load, SIGTERM of all three:
  log rows == 2xx answers, per replica;
- kill -9 of one replica under load: the other two lose nothing, and the database holds
  only whole requests (every logged request has all its rows, none twice);
- PostgreSQL stopped for 10 s under load, then started: no failed request, ``/ready``
  stays 200 and says ``degraded``, the metrics show the spool, and after the replay every
  answered row is in the database, in the order it was answered;
- the same outage with a SIGTERM of the service in it: the rows wait in the spool file,
  and the next start replays them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from helpers import (
    HOUSING,
    free_port,
    register_champion,
    spooled_rows,
    tail,
    wait_until,
)
from synthetic import FEATURES, make_frame, write_config

pytestmark = pytest.mark.slow

BATCH = 3  # every 5th request of a client is a batch of this many rows


@pytest.fixture(scope="module")
def champion_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose MLflow registry (SQLite, in a temp folder) has a champion."""
    tmp = tmp_path_factory.mktemp("scaleout")
    config = write_config(tmp, {"serve": {"log_flush_interval_s": 0.2, "reload_interval_s": 0}})
    register_champion(config)
    return config


def _bodies() -> tuple[list[bytes], bytes]:
    frame = make_frame(50, seed=11)
    houses = [{c: float(frame[c].iloc[i]) for c in FEATURES} for i in range(len(frame))]
    singles = [orjson.dumps(h) for h in houses]
    batch = orjson.dumps({"instances": houses[:BATCH]})
    return singles, batch


class Replica:
    """One `housing serve` process named ``name`` (serve.instance) on a free port."""

    def __init__(
        self,
        config: Path,
        name: str,
        url: str,
        spool: Path,
        tmp: Path,
        *extra: str,
        env_log: bool = True,
    ) -> None:
        self.config, self.name, self.url, self.spool, self.extra = config, name, url, spool, extra
        self.env_log = env_log  # the log's URL in HOUSING_REQUEST_LOG (else in ``extra``)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Replica:
        self.starts += 1
        env = {**os.environ, "HOUSING_INSTANCE": self.name, "HOUSING_SPOOL_DIR": str(self.spool)}
        if self.env_log:
            env["HOUSING_REQUEST_LOG"] = self.url
        cmd = [str(HOUSING), "--config", str(self.config), "serve", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cmd, *self.extra], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        return self

    def wait_ready(self) -> None:
        wait_until(
            lambda: httpx.get(f"{self.base}/ready", timeout=2).status_code == 200,
            120,
            f"{self.name} /ready",
            self.proc,
            self.log,
        )

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def terminate(self, signalled: bool = False) -> int:
        """SIGTERM (unless ``signalled`` already: a second one forces uvicorn out), and
        the exit code (a graceful stop is 0)."""
        assert self.proc is not None
        if not signalled:
            self.sigterm()
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"{self.name} did not stop within 90 s after SIGTERM\n{tail(self.log)}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.base}/metrics", timeout=5).text
        found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        assert found, f"{name} not in /metrics"
        return float(found.group(1))


class Load:
    """Client threads posting to the replicas as fast as they are answered.

    Counts, per replica, the 2xx answers (requests and rows) and every failure (a non-2xx
    answer or a transport error). One client per ``ordered`` replica sends sequence-numbered
    X-Request-IDs one after the other, so its rows' order in the log can be checked."""

    def __init__(
        self, replicas: list[Replica], clients: int = 2, ordered: Replica | None = None
    ) -> None:
        self.singles, self.batch = _bodies()
        self.ok_requests: Counter[str] = Counter()
        self.ok_rows: Counter[str] = Counter()
        self.failures: list[tuple[str, str]] = []
        self.sequence: list[str] = []  # X-Request-IDs the ordered client got a 200 for
        self._stop = threading.Event()
        self._gone: set[str] = set()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(r, i == 0 and r is ordered), daemon=True)
            for r in replicas
            for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def forget(self, replica: Replica) -> None:
        """Stop sending to a replica about to be stopped: its clients send nothing new, and
        the requests they have in flight count only if answered."""
        with self._lock:
            self._gone.add(replica.name)

    def total(self) -> int:
        with self._lock:
            return sum(self.ok_requests.values())

    def _client(self, replica: Replica, ordered: bool) -> None:
        headers = {"content-type": "application/json"}
        n = 0
        with httpx.Client(base_url=replica.base, timeout=30) as http:
            while not self._stop.is_set() and replica.name not in self._gone:
                n += 1
                is_batch = not ordered and n % 5 == 0
                body = self.batch if is_batch else self.singles[n % len(self.singles)]
                rid = f"seq-{n:07d}" if ordered else None
                try:
                    r = http.post(
                        "/predict",
                        content=body,
                        headers={**headers, "x-request-id": rid} if rid else headers,
                    )
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with self._lock:
                    if status == "200":  # counted even when stopping: it was answered
                        self.ok_requests[replica.name] += 1
                        self.ok_rows[replica.name] += BATCH if is_batch else 1
                        if rid:
                            self.sequence.append(rid)
                    elif replica.name not in self._gone:
                        # (Refused connections of a replica being stopped are expected.)
                        self.failures.append((replica.name, status))


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        return list(conn.execute(sql).fetchall())


def _rows_per_instance(url: str) -> dict[str, int]:
    rows = _query(url, "SELECT instance, count(*) FROM requests WHERE status = 200 GROUP BY 1")
    return {name: int(n) for name, n in rows}


def _whole_requests(url: str) -> None:
    """Every logged request has all its rows (1 or a batch), none twice."""
    broken = _query(
        url,
        "SELECT request_id, count(*), count(DISTINCT row_index) FROM requests "
        f"GROUP BY 1 HAVING count(*) NOT IN (1, {BATCH}) OR count(*) <> count(DISTINCT row_index)",
    )
    assert broken == [], f"partial or duplicated requests in the log: {broken[:5]}"


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    """Replicas a test starts; killed at the end whatever happened."""
    started: list[Replica] = []
    yield started
    for r in started:
        r.stop_quietly()


def test_three_replicas_log_every_answer_under_concurrent_load(
    champion_config: Path, pg_url: str, tmp_path: Path, replicas: list[Replica]
) -> None:
    spool = tmp_path / "spool"
    replicas += [
        Replica(champion_config, "api-1", pg_url, spool, tmp_path),
        Replica(champion_config, "api-2", pg_url, spool, tmp_path),
        # Two uvicorn workers: two writers, both logging as the replica api-3, to the log
        # given on the command line (the workers read the config file again).
        Replica(
            champion_config,
            "api-3",
            pg_url,
            spool,
            tmp_path,
            "--workers",
            "2",
            "--request-log",
            pg_url,
            env_log=False,
        ),
    ]
    for r in replicas:
        r.start()  # all at once, on an empty database
    for r in replicas:
        r.wait_ready()
    with Load(replicas) as load:
        wait_until(lambda: load.total() >= 600, 120, "600 answers")
        # SIGTERM all three while the clients keep sending: what they answered is logged.
        for r in replicas:
            load.forget(r)
            r.sigterm()
        codes = [r.terminate(signalled=True) for r in replicas]
    assert codes == [0, 0, 0], [tail(r.log) for r in replicas]
    assert load.failures == []
    logged = _rows_per_instance(pg_url)
    assert all(load.ok_rows[r.name] > 0 for r in replicas), load.ok_rows
    assert logged == dict(load.ok_rows)
    _whole_requests(pg_url)
    assert spooled_rows(spool) == 0


def test_kill_9_of_one_replica_loses_nothing_of_the_others(
    champion_config: Path, pg_url: str, tmp_path: Path, replicas: list[Replica]
) -> None:
    spool = tmp_path / "spool"
    replicas += [Replica(champion_config, f"api-{i}", pg_url, spool, tmp_path) for i in (1, 2, 3)]
    for r in replicas:
        r.start()
    for r in replicas:
        r.wait_ready()
    victim, survivors = replicas[1], [replicas[0], replicas[2]]
    with Load(replicas) as load:
        wait_until(lambda: load.total() >= 300, 120, "300 answers")
        load.forget(victim)
        victim.kill()  # mid-load: its last flush interval of rows may be lost, no more
        before = load.total()
        wait_until(lambda: load.total() >= before + 300, 120, "300 more answers")
        for r in survivors:
            load.forget(r)
        codes = [r.terminate() for r in survivors]
    assert codes == [0, 0]
    assert [f for f in load.failures if f[0] != victim.name] == []
    logged = _rows_per_instance(pg_url)
    for r in survivors:
        assert logged[r.name] == load.ok_rows[r.name], r.name
    assert logged.get(victim.name, 0) <= load.ok_rows[victim.name]
    _whole_requests(pg_url)


def _ordered_ids(url: str, instance: str) -> list[str]:
    rows = _query(
        url,
        f"SELECT request_id FROM requests WHERE instance = '{instance}' "  # noqa: S608
        "AND request_id LIKE 'seq-%' ORDER BY id",
    )
    return [r[0] for r in rows]


def test_postgres_down_10s_under_load_no_failed_request_no_lost_row(
    champion_config: Path, postgres: Any, pg_url: str, tmp_path: Path, replicas: list[Replica]
) -> None:
    spool = tmp_path / "spool"
    api = Replica(champion_config, "api-1", pg_url, spool, tmp_path)
    replicas.append(api.start())
    api.wait_ready()
    with Load([api], clients=3, ordered=api) as load:
        wait_until(lambda: load.total() >= 200, 60, "200 answers before the outage")
        with postgres.down():
            answered = load.total()
            wait_until(lambda: api.metric("housing_request_log_degraded") == 1, 30, "degraded")
            ready = httpx.get(f"{api.base}/ready", timeout=5)
            assert ready.status_code == 200 and ready.json()["request_log"] == "degraded"
            wait_until(
                lambda: api.metric("housing_request_log_spooled_rows") > 0, 30, "rows spooled"
            )
            info = httpx.get(f"{api.base}/model/info", timeout=5).text
            metrics = httpx.get(f"{api.base}/metrics", timeout=5).text
            assert '"state":"degraded"' in info and "***@127.0.0.1" in info
            time.sleep(10)  # the outage itself: 10 s under load
            assert load.total() > answered, "the service stopped answering in the outage"
            assert api.metric("housing_request_log_write_failures_total") >= 1
        # The database is back: the spool is replayed and the writer is healthy again.
        wait_until(
            lambda: (
                api.metric("housing_request_log_spooled_rows") == 0
                and api.metric("housing_request_log_degraded") == 0
            ),
            60,
            "the spool to be replayed",
        )
        assert httpx.get(f"{api.base}/ready", timeout=5).json()["request_log"] == "ok"
        assert api.metric("housing_request_log_replayed_rows_total") > 0
        load.forget(api)
        assert api.terminate() == 0
    assert load.failures == []
    assert _rows_per_instance(pg_url) == {"api-1": load.ok_rows["api-1"]}
    assert _ordered_ids(pg_url, "api-1") == load.sequence
    _whole_requests(pg_url)
    assert spooled_rows(spool) == 0
    # The outage was logged (connection errors and all), never with the URL's password.
    output = api.log.read_text()
    assert "database unreachable" in output
    assert postgres.password not in output + info + metrics


def test_sigterm_in_an_outage_keeps_the_rows_for_the_next_start(
    champion_config: Path, postgres: Any, pg_url: str, tmp_path: Path, replicas: list[Replica]
) -> None:
    spool = tmp_path / "spool"
    api = Replica(champion_config, "api-1", pg_url, spool, tmp_path)
    replicas.append(api.start())
    api.wait_ready()
    with Load([api], clients=3, ordered=api) as load:
        wait_until(lambda: load.total() >= 200, 60, "200 answers before the outage")
        postgres.stop()
        try:
            wait_until(lambda: api.metric("housing_request_log_degraded") == 1, 30, "degraded")
            answered = load.total()
            wait_until(lambda: load.total() >= answered + 300, 60, "300 answers in the outage")
            load.forget(api)
            assert api.terminate() == 0  # during the outage
            load.stop()
            in_spool = spooled_rows(spool)
            # The rows answered in the outage wait in the spool file (plus those of the
            # last flush before it was noticed).
            assert in_spool >= 300
            # A restart while the database is still down stops at start-up (exit 3, one
            # Error: line without the password) and leaves the spool alone.
            api.start()
            assert api.proc is not None
            assert api.proc.wait(60) == 3
            last = tail(api.log, 1)
            assert last.startswith("Error: ") and postgres.password not in last, last
            assert spooled_rows(spool) == in_spool
        finally:
            postgres.start()
    in_db = sum(_rows_per_instance(pg_url).values())
    assert in_db + in_spool == load.ok_rows["api-1"]
    # The next start (same spool folder) replays them, in order.
    api.start().wait_ready()
    wait_until(lambda: spooled_rows(spool) == 0, 60, "the spool to be replayed")
    assert api.terminate() == 0
    assert load.failures == []
    assert _rows_per_instance(pg_url) == {"api-1": load.ok_rows["api-1"]}
    assert _ordered_ids(pg_url, "api-1") == load.sequence
    _whole_requests(pg_url)


def test_a_locked_table_holds_neither_feedback_nor_metrics_nor_a_stop(
    champion_config: Path,
    postgres: Any,
    pg_url: str,
    tmp_path: Path,
    replicas: list[Replica],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log's tables locked by another session (``VACUUM FULL``, a long migration): a
    burst of ``POST /feedback`` (more than asyncio's default executor has threads) is
    answered 503 with one line, ``/metrics`` is answered 200 without the drift gauges,
    ``/predict`` keeps answering, and SIGTERM ends the service, all while the lock is
    held. These used to wait for the lock: /feedback never answered, the requests behind
    it (/metrics) queued for the executor's threads, and the stop hung."""
    import psycopg

    from housing_mlops import store

    monkeypatch.setenv("HOUSING_FEEDBACK_TOKEN", "fb-token")
    store.create_log(pg_url)
    db = store.open_log(pg_url, create=True)
    store.save_drift_run(db, {"verdict": "ok", "dataset_drift": True, "scores": []})
    db.close()
    api = Replica(champion_config, "api-1", pg_url, tmp_path / "spool", tmp_path)
    replicas.append(api.start())
    api.wait_ready()
    assert api.metric("housing_dataset_drift") == 1  # the drift gauges, while unlocked
    singles, _ = _bodies()
    json_type = {"content-type": "application/json"}
    label = {"request_id": "any", "actual": 1.0}
    auth = {"authorization": "Bearer fb-token"}

    def feedback(_: int) -> httpx.Response:
        return httpx.post(f"{api.base}/feedback", json=label, headers=auth, timeout=30)

    def metrics(_: int) -> httpx.Response:
        return httpx.get(f"{api.base}/metrics", timeout=30)

    with psycopg.connect(pg_url) as locker:
        locker.execute(
            "LOCK TABLE requests, feedback, drift_runs, drift_scores IN ACCESS EXCLUSIVE MODE"
        )
        try:
            with ThreadPoolExecutor(12) as pool:
                labels = list(pool.map(feedback, range(8)))
                scrapes = list(pool.map(metrics, range(4)))
            predicted = httpx.post(f"{api.base}/predict", content=singles[0], headers=json_type)
            api.sigterm()
            try:
                code = api.proc.wait(30) if api.proc else None
            except subprocess.TimeoutExpired:
                code = None
        finally:
            locker.rollback()
    for r in labels:
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert detail.startswith("the request log cannot take labels right now")
        assert "\n" not in detail and postgres.password not in detail
        assert r.headers["retry-after"] == "5"
    for r in scrapes:
        assert r.status_code == 200
        assert "housing_http_requests_total{" in r.text
        assert "housing_dataset_drift" not in r.text  # left out, not stale or a hang
    assert predicted.status_code == 200
    assert code == 0, f"housing serve did not stop within 30 s of SIGTERM\n{tail(api.log)}"
    output = api.log.read_text()
    assert "Traceback" not in output and postgres.password not in output
    # The answered /predict was not lost: spooled, replayed by the next start.
    api.start().wait_ready()
    wait_until(lambda: _rows_per_instance(pg_url).get("api-1") == 1, 60, "the row replayed")
    assert api.terminate() == 0

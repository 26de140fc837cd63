"""End to end: the real ``housing serve`` command on a free port, serving a champion from a
real MLflow registry (SQLite store in tmp_path); a new champion is picked up through
``POST /model/reload``; SIGTERM flushes every answered request to the log. Also: no
champion -> exit 5 before binding; several workers share metrics.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, register_champion, wait_until
from synthetic import make_frame, write_config

from housing_mlops.config import load_config

HOUSING = str(Path(sys.executable).with_name("housing"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("e2e")
    config = write_config(tmp, {"serve": {"request_log": str(tmp / "requests.db")}})
    version = register_champion(config)
    return {"config": config, "version": version, "tmp": tmp}


def start(config: Path, port: int, *extra: str, token: str = "") -> subprocess.Popen[str]:
    env = {**os.environ, "HOUSING_RELOAD_TOKEN": token}
    return subprocess.Popen(
        [HOUSING, "--config", str(config), "serve", "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_ready(proc: subprocess.Popen[str], base: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.communicate()}")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("serve did not become ready")


def rows(n: int) -> list[dict[str, float]]:
    from housing_mlops.features import FEATURES

    frame = make_frame(n, seed=9)
    return [{c: float(frame[c].iloc[i]) for c in FEATURES} for i in range(n)]


def log_rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from requests order by id")]
    finally:
        conn.close()


@pytest.mark.slow
def test_no_champion_exits_5_before_binding(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    port = free_port()
    proc = start(config, port)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5
    assert "run `housing promote` first" in err
    assert err.strip().splitlines()[-1].startswith("Error: ")


def test_port_in_use_and_unwritable_log_fail_before_serving(
    store: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from housing_mlops.cli import run

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = run(["--config", str(store["config"]), "serve", "--port", str(port)])
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log's folder should be")
    config = write_config(
        tmp_path,
        {
            "serve": {"request_log": str(blocker / "requests.db")},
            "mlflow": load_config(store["config"]).mlflow.model_dump(),
        },
    )
    code = run(["--config", str(config), "serve", "--port", str(free_port())])
    assert code == 3
    assert "cannot open the request log" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("nosuchhost.invalid", "the host 'nosuchhost.invalid' cannot be resolved"),
        ("192.0.2.1", "192.0.2.1 is not an address of this machine"),  # TEST-NET-1
    ],
)
def test_a_host_it_cannot_listen_on_says_so_not_the_port(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str], host: str, reason: str
) -> None:
    from housing_mlops.cli import run

    port = free_port()
    code = run(["--config", str(store["config"]), "serve", "--host", host, "--port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"Error: cannot listen on {host}:{port} ("), err
    assert f"): {reason}: pass another --host (0.0.0.0 listens on every interface" in err
    assert "--port" not in err and err.count("\n") == 2  # the Error: line and the Try line


@pytest.mark.slow
def test_serve_answers_and_sigterm_flushes_every_answered_request(store: dict[str, Any]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(store["config"], port, token="e2e-token")
    try:
        wait_ready(proc, base)
        info = httpx.get(f"{base}/model/info").json()
        assert info["version"] == store["version"]
        assert info["alias"] == "champion"
        assert info["metrics"]["cv_rmse_mean"] == 0.3
        assert info["fast_path"] is True
        answered = 0
        request_ids = []
        with httpx.Client(base_url=base) as http:
            for row in rows(30):
                r = http.post("/predict", json=row)
                assert r.status_code == 200, r.text
                request_ids.append(r.json()["request_id"])
                answered += 1
            r = http.post("/predict", json={"instances": rows(7)})
            assert r.status_code == 200
            answered += 7
            bad = http.post("/predict", json={**rows(1)[0], "Latitude": 60.0})
            assert bad.status_code == 422
            # A new champion, picked up on demand through the real registry.
            new_version = register_champion(store["config"], seed=5)
            headers = {"authorization": "Bearer e2e-token"}
            r = http.post("/model/reload", headers=headers, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["reloaded"] is True
            assert r.json()["version"] == new_version
            r = http.post("/predict", json=rows(1)[0])
            assert r.json()["model_version"] == new_version
            answered += 1
            assert http.get("/model/info").json()["alias"] == "champion"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"version {store['version']}" in err  # the startup line on stderr
    logged = log_rows(store["tmp"] / "requests.db")
    ok = [r for r in logged if r["status"] == 200]
    assert len(ok) == answered
    assert [r["request_id"] for r in ok[:30]] == request_ids
    assert [r["model_version"] for r in ok] == [store["version"]] * (answered - 1) + [new_version]
    assert [r["status"] for r in logged if r["status"] != 200] == [422]
    # Both served versions' training profiles wait in the drift cache, so `housing drift`
    # needs no MLflow round trip for them.
    conn = sqlite3.connect(store["tmp"] / "requests.db")
    try:
        cached = {v for (v,) in conn.execute("select model_version from drift_references")}
    finally:
        conn.close()
    assert cached == {store["version"], new_version}


@pytest.mark.slow
def test_two_workers_aggregate_metrics(store: dict[str, Any]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(store["config"], port, "--workers", "2")
    try:
        wait_ready(proc, base)
        # New connections so both workers get some of the traffic.
        for row in rows(40):
            assert httpx.post(f"{base}/predict", json=row).status_code == 200

        def predictions_total() -> float:
            text = httpx.get(f"{base}/metrics").text
            lines = [ln for ln in text.splitlines() if ln.startswith("housing_predictions_total{")]
            return float(lines[0].split()[-1]) if lines else 0.0

        # The workers' metric files are aggregated on scrape: wait for all 40, no more.
        wait_until(lambda: predictions_total() >= 40, 10, "both workers' predictions")
        text = httpx.get(f"{base}/metrics").text
        line = next(ln for ln in text.splitlines() if ln.startswith("housing_predictions_total{"))
        assert float(line.split()[-1]) == 40
        assert "housing_model_info{" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def port_bound(port: int) -> bool:
    """Does a process hold 127.0.0.1:port (bound, listening or not)?"""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.mark.slow
def test_the_port_is_taken_while_the_model_loads(store: dict[str, Any], tmp_path: Path) -> None:
    """A second server on the port of a `housing serve` that is still loading its model fails
    at once (exit 2, one Error line), and the first then answers on it. The port used to be
    bound but not listening until uvicorn started: a second SO_REUSEADDR server could bind
    and listen on it meanwhile and get the traffic."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = start(store["config"], port)
    try:
        wait_until(lambda: port_bound(port) or first.poll() is not None, 90, "serve to bind")
        assert first.poll() is None, first.communicate()
        first.send_signal(signal.SIGSTOP)  # still loading its model, as a slow load would be
        try:
            # Any server's socket (uvicorn, http.server: SO_REUSEADDR) cannot take the port.
            with socket.socket() as other:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with pytest.raises(OSError):
                    other.bind(("127.0.0.1", port))
                    other.listen()
            second = start(store["config"], port, "--request-log", str(tmp_path / "second.db"))
            _, err = second.communicate(timeout=120)
        finally:
            first.send_signal(signal.SIGCONT)
        assert second.returncode == 2, err
        errors = [line for line in err.splitlines() if line.startswith("Error:")]
        assert errors == [
            f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): "
            "pass another --port"
        ]
        wait_ready(first, base)  # the first one serves: it answers on its port
        r = httpx.post(f"{base}/predict", json=rows(1)[0])
        assert r.status_code == 200 and r.json()["role"] == "champion", r.text
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0

"""The traffic generator: shifts, pacing, batching, status counting, and the demo path.

Most tests drive a small stand-in service on a real uvicorn server (127.0.0.1, free port)
that records what it receives: what is under test here is what the generator sends and
how fast, which the real service's answers would only hide. The last test runs the whole
demo path with the real ``housing serve``: traffic -> request log -> ``housing drift``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request  # module level: the route's annotation is resolved from here
from helpers import ServerThread, free_port
from synthetic import make_frame, write_config

from housing_mlops.config import load_config
from housing_mlops.errors import UsageError
from housing_mlops.traffic import FEATURES, main, parse_shift, prepare_rows, send_rows

HOUSING = str(Path(sys.executable).with_name("housing"))


@pytest.fixture(scope="module")
def stand_in() -> Any:
    """A recording /predict on real uvicorn: 422 for MedInc > 100, else 200."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    received: list[list[dict[str, float]]] = []

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        body = await request.json()
        rows = body["instances"] if "instances" in body else [body]
        received.append(rows)
        if any(r["MedInc"] > 100 for r in rows):
            return JSONResponse({"detail": "MedInc out of range"}, status_code=422)
        return {"predictions": [1.0] * len(rows)}

    with ServerThread(app, log_level="error") as server:
        yield {"url": server.base, "received": received}


def test_parse_shift_reads_feature_factor_pairs() -> None:
    assert parse_shift(["MedInc=1.2", "AveRooms=0.9"]) == {"MedInc": 1.2, "AveRooms": 0.9}
    assert parse_shift([]) == {}
    for bad in ("MedInc", "Income=1.2", "MedInc=abc", "MedInc=inf"):
        with pytest.raises(UsageError, match="--shift"):
            parse_shift([bad])


def test_prepare_rows_cycles_through_the_split_and_shifts_one_feature() -> None:
    frame = make_frame(50, seed=3)
    rows = prepare_rows(frame, 120, {"MedInc": 1.2}, seed=1)
    assert len(rows) == 120 and list(rows[0]) == list(FEATURES)
    # Key each original row by its untouched features; MedInc must come back x 1.2.
    originals = {
        tuple(row[f] for f in FEATURES if f != "MedInc"): row["MedInc"]
        for row in frame[list(FEATURES)].to_dict("records")
    }
    used = set()
    for r in rows:
        key = tuple(r[f] for f in FEATURES if f != "MedInc")
        assert r["MedInc"] == pytest.approx(1.2 * originals[key])
        used.add(key)
    assert used == set(originals)  # 120 rows from 50: every row used, in shuffled cycles
    first_cycle = {tuple(r[f] for f in FEATURES if f != "MedInc") for r in rows[:50]}
    assert first_cycle == set(originals)  # no repeat before every row was sent once
    assert prepare_rows(frame, 10, seed=1) == prepare_rows(frame, 10, seed=1)
    assert prepare_rows(frame, 0) == []


def test_rows_are_sent_paced_and_all_answered(stand_in) -> None:
    stand_in["received"].clear()
    rows = prepare_rows(make_frame(40, seed=5), 40)
    summary = send_rows(stand_in["url"], rows, rate=100, concurrency=4)
    assert summary["rows"] == summary["ok_rows"] == 40 and summary["requests"] == 40, summary
    assert summary["row_status"] == {"200": 40}
    assert summary["elapsed_s"] >= 0.38  # 40 rows at 100 rows/s: the last leaves at 0.39 s
    got = sorted(json.dumps(r, sort_keys=True) for batch in stand_in["received"] for r in batch)
    assert got == sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_batches_go_as_instances_and_rejections_are_counted(stand_in) -> None:
    stand_in["received"].clear()
    rows = prepare_rows(make_frame(30, seed=6), 30)
    summary = send_rows(stand_in["url"], rows, rate=0, batch_size=10)
    assert summary["requests"] == 3 and [len(b) for b in stand_in["received"]] == [10, 10, 10]
    bad = prepare_rows(make_frame(5, seed=6), 5, {"MedInc": 1000.0})
    summary = send_rows(stand_in["url"], bad, rate=0)
    assert summary["row_status"] == {"422": 5} and summary["ok_rows"] == 0


@pytest.fixture
def processed_config(tmp_path: Path) -> Path:
    from helpers import write_processed

    config = write_config(tmp_path)
    write_processed(load_config(config), n=200, seed=0)
    return config


def test_main_sends_the_shifted_test_split(stand_in, processed_config, capsys) -> None:
    from housing_mlops import featurize

    stand_in["received"].clear()
    code = main(
        [
            "--config",
            str(processed_config),
            "--url",
            stand_in["url"],
            "--rows",
            "40",
            "--rate",
            "0",
            "--shift",
            "MedInc=1.2",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)
    assert summary["ok_rows"] == 40 and summary["shift"] == {"MedInc": 1.2}
    x_test, _ = featurize.load_split(load_config(processed_config), "test")
    sent = sorted(r["MedInc"] for b in stand_in["received"] for r in b)
    assert sent == pytest.approx(sorted(x_test["MedInc"] * 1.2))  # 40 rows: the whole split


def test_main_without_a_server_exits_1_and_says_why(processed_config, capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["--config", str(processed_config), "--url", url, "--rows", "3", "--rate", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"Error: no row was answered by {url}/predict" in err
    assert "is `housing serve` running?" in err


def test_a_service_that_refuses_every_row_is_not_called_down(
    stand_in, processed_config, capsys
) -> None:
    # Every shifted row got a 422 from a running service, and the run ended "is `housing
    # serve` running?", sending users to restart a service that had answered every request.
    code = main(
        ["--config", str(processed_config), "--url", stand_in["url"], "--rows", "3",
         "--rate", "0", "--shift", "MedInc=1000"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [
        f"Error: no row was answered by {stand_in['url'].rstrip('/')}/predict: the service "
        "refused every request (statuses {'422': 3}): check --batch-size (at most "
        "serve.max_batch_size) and --shift (rows outside the model's ranges get 422)"
    ]


def test_main_rejects_a_bad_shift_with_exit_2(processed_config, capsys) -> None:
    code = main(["--config", str(processed_config), "--shift", "Income=2"])
    assert code == 2
    assert "Error: --shift 'Income=2': use FEATURE=FACTOR" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "Error: unrecognized arguments: --bogus"),
        (["--rows", "abc"], "Error: argument --rows: invalid int value: 'abc'"),
        (["--split", "dev"], "Error: argument --split: invalid choice: 'dev'"),
    ],
)
def test_a_bad_option_is_one_error_line_and_exit_2(
    processed_config, capsys, args: list[str], message: str
) -> None:
    code = main(["--config", str(processed_config), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[0].startswith(message), err
    assert err.splitlines()[1:] == ["Try 'python -m housing_mlops.traffic -h' for help."]


@pytest.mark.parametrize("url", ["{host}:{port}", "ftp://{host}:{port}", "http://:{port}"])
def test_a_url_without_http_is_exit_2_before_anything_is_sent(
    stand_in, processed_config, capsys, url: str
) -> None:
    # `--url localhost:8000` failed on every row and ended "is `housing serve` running?"
    # (exit 1), sending a user to restart a service that was up.
    base = httpx.URL(stand_in["url"])
    given = url.format(host=base.host, port=base.port)
    before = len(stand_in["received"])
    code = main(["--config", str(processed_config), "--url", given, "--rows", "3"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"Error: --url {given!r} is not an http(s) URL: use http://HOST:PORT")
    assert len(stand_in["received"]) == before  # nothing sent


@pytest.mark.parametrize("path", ["/predict", "/predict/", "/feedback"])
def test_a_url_naming_an_endpoint_is_exit_2_before_anything_is_sent(
    stand_in, processed_config, capsys, path: str
) -> None:
    # `--url http://127.0.0.1:8000/predict` (the endpoint, as curl takes it) posted every
    # row to /predict/predict: 404s, then "is `housing serve` running?" (exit 1).
    given = stand_in["url"].rstrip("/") + path
    before = len(stand_in["received"])
    code = main(["--config", str(processed_config), "--url", given, "--rows", "3"])
    err = capsys.readouterr().err
    assert code == 2, err
    endpoint = path.strip("/")
    assert err.splitlines()[0] == (
        f"Error: --url {given!r} names the /{endpoint} endpoint: give the service's base URL "
        f"({stand_in['url'].rstrip('/')}); /predict and /feedback are added to it"
    )
    assert len(stand_in["received"]) == before  # nothing sent


def test_ctrl_c_while_sending_is_one_error_line_and_exit_130(stand_in, processed_config) -> None:
    # A paced run (`--rows 500 --rate 100`) stopped with Ctrl+C ended in asyncio's
    # KeyboardInterrupt traceback.
    stand_in["received"].clear()
    cmd = [sys.executable, "-m", "housing_mlops.traffic", "--config", str(processed_config)]
    cmd += ["--url", stand_in["url"], "--rows", "100000", "--rate", "20", "--concurrency", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not stand_in["received"]:  # sending has begun
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["Error: interrupted"], err


@pytest.mark.parametrize("as_json", [True, False])
def test_a_reader_that_leaves_early_is_exit_141_without_a_traceback(
    stand_in, processed_config, as_json: bool
) -> None:
    # `python -m housing_mlops.traffic … --json | head` with the reader gone ended in a
    # BrokenPipeError traceback and exit 1 ("no row was answered" in the table's terms),
    # where `housing` ends such a run with 141.
    cmd = [sys.executable, "-m", "housing_mlops.traffic", "--config", str(processed_config)]
    cmd += ["--url", stand_in["url"], "--rows", "3", "--rate", "0"] + (
        ["--json"] if as_json else []
    )
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before the summary is printed
    proc = subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------- the demo path
@pytest.mark.slow
def test_demo_path_traffic_to_real_service_then_drift(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys
) -> None:
    """The shared synthetic store (test_registry), version 1 (ridge) served for real."""
    from helpers import copy_store, trained_store

    from housing_mlops.cli import run

    base, _ = trained_store(tmp_path_factory)
    copied = copy_store(base, tmp_path)
    config = write_config(
        tmp_path,
        {
            "paths": copied.paths.model_dump(mode="json"),
            "mlflow": copied.mlflow.model_dump(mode="json"),
            "serve": {"request_log": str(tmp_path / "requests.db")},
        },
    )
    version = "1"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HOUSING_RELOAD_TOKEN": ""}
    server = subprocess.Popen(
        [
            HOUSING,
            "--config",
            str(config),
            "serve",
            "--port",
            str(port),
            "--model-version",
            version,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.communicate()[1]
            time.sleep(0.3)
        common = ["--config", str(config), "--url", url, "--rate", "0", "--batch-size", "20"]
        assert main([*common, "--rows", "120"]) == 0  # the synthetic test split, once
        time.sleep(1.1)
        middle = datetime.now(tz=UTC).isoformat()
        time.sleep(0.1)
        assert main([*common, "--rows", "600", "--shift", "MedInc=1.2"]) == 0
    finally:
        server.send_signal(signal.SIGTERM)  # flushes the request log
        server.communicate(timeout=60)
    capsys.readouterr()
    code = run(["--config", str(config), "drift", "--until", middle, "--json"])
    plain = json.loads(capsys.readouterr().out)
    assert code == 0 and plain["rows"] == 120 and plain["model_version"] == version
    code = run(["--config", str(config), "drift", "--since", middle, "--json"])
    shifted = json.loads(capsys.readouterr().out)
    marks = {s["feature"]: s["verdict"] for s in shifted["scores"]}
    assert code == 6 and shifted["rows"] >= 590, marks  # a few rows may leave the valid range
    assert marks["MedInc"] == "drift" and marks["prediction"] == "drift", marks


# -------------------------------------------------------------------- ground truth
FEEDBACK_TOKEN = "feedback-s3cret"  # noqa: S105 - a test token


@pytest.fixture
def labelled_stand_in() -> Any:
    """A stand-in for the service's /predict and POST /feedback on real uvicorn.

    POST /feedback is on the live-quality branch; this stand-in follows its contract
    (common.md: Bearer token, one object or an array, 200 with applied/unknown/duplicate
    counts) so the generator's side is tested here; at integration the lead points this
    test at the real service. /predict answers with a request id and records each row
    sent under (request id, row index), with the moment it answered.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    state: dict[str, Any] = {"rows": {}, "labels": {}, "posts": [], "answered_at": []}

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        body = await request.json()
        rows = body["instances"] if "instances" in body else [body]
        rid = f"q{len(state['rows'])}"
        for j, row in enumerate(rows):
            state["rows"][rid, j] = row
        state["answered_at"].append(time.monotonic())
        return JSONResponse(
            {"request_id": rid, "predictions": [1.0] * len(rows)},
            headers={"X-Request-ID": rid, "X-Model-Role": "champion"},
        )

    @app.post("/feedback")
    async def feedback(request: Request) -> Any:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return JSONResponse({"detail": "missing Bearer token"}, status_code=401)
        if auth.removeprefix("Bearer ") != FEEDBACK_TOKEN:
            return JSONResponse({"detail": "wrong feedback token"}, status_code=403)
        body = await request.json()
        items = body if isinstance(body, list) else [body]
        state["posts"].append((time.monotonic(), len(items)))
        counts = {"applied": 0, "unknown": 0, "duplicate": 0}
        for item in items:
            key = (item["request_id"], item.get("row_index", 0))
            if key not in state["rows"]:
                counts["unknown"] += 1
            elif key in state["labels"]:
                counts["duplicate"] += 1
            else:
                state["labels"][key] = item["actual"]
                counts["applied"] += 1
        return counts

    with ServerThread(app, log_level="error") as server:
        yield {"url": server.base, **state}


def _truth(config: Path) -> dict[tuple[float, ...], float]:
    """The test split's true value of each row, keyed by its features."""
    from housing_mlops import featurize

    x_test, y_test = featurize.load_split(load_config(config), "test")
    return {
        tuple(float(x_test[f].iloc[i]) for f in FEATURES): float(y_test.iloc[i])
        for i in range(len(x_test))
    }


@pytest.mark.parametrize("batch_size", [1, 4])
def test_feedback_posts_the_true_value_of_a_share_of_the_answered_rows(
    labelled_stand_in, processed_config, capsys, monkeypatch, batch_size: int
) -> None:
    monkeypatch.setenv("HOUSING_FEEDBACK_TOKEN", FEEDBACK_TOKEN)
    code = main(
        [
            "--config",
            str(processed_config),
            "--url",
            labelled_stand_in["url"],
            "--rows",
            "40",
            "--rate",
            "0",
            "--batch-size",
            str(batch_size),
            "--feedback-share",
            "0.5",
            "--feedback-delay",
            "0.5",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    feedback = json.loads(captured.out)["feedback"]
    assert feedback["labels"] == 20 and feedback["applied"] == 20, feedback
    assert feedback["unknown"] == feedback["duplicate"] == 0
    labels = labelled_stand_in["labels"]
    assert len(labels) == 20
    # Each label is the true MedHouseVal of the very row sent under that id and index.
    truth = _truth(processed_config)
    for key, actual in labels.items():
        row = labelled_stand_in["rows"][key]
        assert actual == pytest.approx(truth[tuple(row[f] for f in FEATURES)])
    # Batched (one POST for 20 labels), and only after the delay.
    assert [n for _, n in labelled_stand_in["posts"]] == [20]
    assert labelled_stand_in["posts"][0][0] - max(labelled_stand_in["answered_at"]) >= 0.5
    assert "waiting 0.5 s for the request log" in captured.err


def test_feedback_summary_line_and_a_wrong_token_is_exit_1(
    labelled_stand_in, processed_config, capsys, monkeypatch
) -> None:
    common = ["--config", str(processed_config), "--url", labelled_stand_in["url"]]
    common += ["--rows", "10", "--rate", "0", "--feedback-delay", "0"]
    code = main([*common, "--feedback-share", "1", "--feedback-token", FEEDBACK_TOKEN])
    out = capsys.readouterr().out
    assert code == 0
    assert (
        f"feedback: posted 10 labels to {labelled_stand_in['url']}/feedback: applied 10, "
        "unknown 0, duplicate 0" in out
    ), out
    monkeypatch.setenv("HOUSING_FEEDBACK_TOKEN", "not-the-token")
    code = main([*common, "--feedback-share", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"Error: no label was accepted by {labelled_stand_in['url']}/feedback (HTTP 403"
        )
    ), err
    assert len(labelled_stand_in["labels"]) == 10  # nothing more was applied


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--feedback-share", "1.5"], "--feedback-share must be between 0 and 1"),
        (["--feedback-share", "0.5", "--feedback-delay", "-1"], "--feedback-delay must be >= 0"),
        # argparse takes nan and inf: nan ended in time.sleep's traceback after the rows.
        (["--feedback-share", "0.5", "--feedback-delay", "nan"], "--feedback-delay must be >= 0"),
        (["--feedback-share", "0.5", "--feedback-delay", "inf"], "--feedback-delay must be >= 0"),
        # Every row timed out at once, then "is `housing serve` running?" (exit 1).
        (["--timeout", "0"], "--timeout must be > 0"),
        (["--timeout", "-1"], "--timeout must be > 0"),
        (["--timeout", "nan"], "--timeout must be > 0"),
        (["--rate", "nan"], "--rate must be >= 0"),
        (["--seed", "-1"], "--seed must be >= 0"),  # numpy's ValueError traceback
        (["--feedback-share", "0.5"], "set HOUSING_FEEDBACK_TOKEN or pass --feedback-token"),
    ],
)
def test_bad_feedback_options_are_exit_2_before_anything_is_sent(
    labelled_stand_in, processed_config, capsys, extra: list[str], message: str
) -> None:
    code = main(
        ["--config", str(processed_config), "--url", labelled_stand_in["url"], "--rows", "5"]
        + extra
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert labelled_stand_in["rows"] == {}  # nothing sent

"""`housing drift` end to end: a real MLflow store with a trained model, a real request log.

A module-scoped fixture trains one ridge pipeline on synthetic data (the train helper's
``train``), so the reference is the version's own training profile with its predictions.
Requests are written to the log as the service writes them, with the model's real
predictions: the test split in one window, the test split with MedInc x 1.2 in another.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import damaged_copy, write_processed
from synthetic import write_config

from housing_mlops import columns, store
from housing_mlops.cli import run
from housing_mlops.config import load_config

FEATURES = list(columns.FEATURES)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def log_frame(
    write: Any, path: Path, frame: Any, preds: Any, start: float, version: str = "1"
) -> None:
    rows = [
        {
            "ts": start + i * 0.01,
            "request_id": f"v{version}-{start}-{i}",
            "row_index": 0,
            "model_name": "test-housing",
            "model_version": version,
            **{c: float(frame[c].iloc[i]) for c in FEATURES},
            "prediction": float(preds[i]),
            "latency_ms": 2.0,
            "status": 200,
        }
        for i in range(len(frame))
    ]
    write(path, rows)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, write_request_log: Any) -> dict[str, Any]:
    from housing_mlops import featurize, registry
    from housing_mlops.train import train

    tmp = tmp_path_factory.mktemp("drift-cli")
    config = write_config(tmp, {"features": {"profile_sample_size": 3000}})
    settings = load_config(config)
    write_processed(settings, n=5000, seed=0)
    train(settings, only=["ridge"])
    ref = registry.resolve(settings, version=1)
    model = registry.load_model(settings, ref)
    x_test, _ = featurize.load_split(settings, "test")
    shifted = x_test.copy()
    shifted["MedInc"] *= 1.2

    anchor = time.time() - 6 * 3600  # windows are given as ISO timestamps around this
    log = (write_request_log, Path(settings.serve.request_log))
    log_frame(*log, x_test, model.predict(x_test), anchor)  # [anchor, anchor + 10 s)
    log_frame(*log, shifted, model.predict(shifted), anchor + 3600)  # an hour later
    log_frame(*log, x_test.iloc[:10], model.predict(x_test.iloc[:10]), anchor + 7200)  # tiny
    log_frame(*log, x_test.iloc[:300], model.predict(x_test.iloc[:300]), anchor + 10800, "9")
    return {"config": config, "settings": settings, "anchor": anchor, "rows": len(x_test)}


def window_args(project: dict[str, Any], start: float, end: float) -> list[str]:
    a = project["anchor"]
    return ["--since", iso(a + start), "--until", iso(a + end)]


def drift_json(project, capsys, *args: str) -> tuple[int, dict[str, Any], str]:
    code = run(["--config", str(project["config"]), "drift", "--json", *args])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {}), out.err


def marks(result: dict[str, Any]) -> dict[str, str]:
    return {s["feature"]: s["verdict"] for s in result["scores"]}


def test_the_test_split_drifts_nowhere_exit_0(project, capsys) -> None:
    code, result, err = drift_json(project, capsys, *window_args(project, -60, 60))
    assert code == 0, err
    assert result["rows"] == project["rows"] and result["model_version"] == "1"
    assert result["reference"]["source"] == "registry:test-housing/1"
    assert "drift" not in marks(result).values(), marks(result)
    assert set(marks(result)) == {*FEATURES, "prediction"}
    assert result["dataset_drift"] is False and result["any_drift"] is False


def test_medinc_shift_drifts_medinc_and_prediction_exit_6(project, capsys) -> None:
    code, result, err = drift_json(project, capsys, *window_args(project, 3500, 3700))
    assert code == 6, err
    marked = marks(result)
    assert marked["MedInc"] == "drift" and marked["prediction"] == "drift", marked
    assert [f for f in FEATURES if marked[f] == "drift"] == ["MedInc"], marked
    assert result["drifting_features"] == ["MedInc"] and result["verdict"] == "drift"
    # Stored: the latest run is this one, with every score.
    db = store.open_readonly(project["settings"].serve.request_log)
    assert db is not None
    latest = store.latest_drift_run(db)
    db.close()
    assert latest is not None and latest["id"] == result["run_id"]
    assert latest["rows"] == project["rows"] and latest["any_drift"] is True
    stored = {s["feature"]: s for s in latest["scores"]}
    assert stored["MedInc"]["verdict"] == "drift"
    assert stored["MedInc"]["psi"] == pytest.approx(result["scores"][0]["psi"])


def test_table_output_has_every_column_and_the_dataset_line(project, capsys) -> None:
    # The config after the subcommand, as users and CI jobs type it.
    code = run(["drift", "--config", str(project["config"]), *window_args(project, 3500, 3700)])
    out, err = capsys.readouterr()
    assert code == 6
    # Drift found is a finding, not a failure: its own label, one line.
    assert err == "Drift: MedInc, prediction marked drift (exit 6)\n"
    header = next(line for line in out.splitlines() if line.startswith("feature"))
    for column in ("rows", "ref mean", "cur mean", "PSI", "KS", "p", "Wasserstein", "verdict"):
        assert column in header
    medinc = next(line for line in out.splitlines() if line.startswith("MedInc"))
    assert medinc.rstrip().endswith("drift") and str(project["rows"]) in medinc
    assert "Dataset drift: no (1/8 features drifting" in out
    assert "marked drift: MedInc, prediction" in out


def test_the_reference_is_cached_after_the_first_check(project, capsys) -> None:
    drift_json(project, capsys, *window_args(project, -60, 60))
    db = store.open_readonly(project["settings"].serve.request_log)
    assert db is not None
    rows = db.execute("SELECT model_name, model_version, run_id FROM drift_references").fetchall()
    db.close()
    assert [(r[0], r[1]) for r in rows] == [("test-housing", "1")] and rows[0][2]


def test_window_with_two_versions_judges_the_majority_and_lists_the_other(project, capsys) -> None:
    code, result, _ = drift_json(project, capsys, *window_args(project, 3500, 11000))
    assert result["model_version"] == "1"  # 1010 rows of version 1, 300 of version 9
    assert result["other_versions"] == {"9": 300}
    assert code == 6


def test_version_without_a_reference_is_insufficient_data_exit_7(project, capsys) -> None:
    code, _, err = drift_json(project, capsys, "--model-version", "9", "--since", "1d")
    assert code == 7
    assert err.startswith("Error: no reference profile for model version 9: ")


def test_tiny_window_exit_7(project, capsys) -> None:
    code, _, err = drift_json(project, capsys, *window_args(project, 7100, 7300))
    assert code == 7
    assert "Error: only 10 answered request(s) from model version 1" in err
    assert "drift needs at least 50 (drift.min_rows)" in err


def test_empty_window_and_unknown_version_exit_7(project, capsys) -> None:
    code, _, err = drift_json(project, capsys, "--since", "2020-01-01", "--until", "2020-01-02")
    assert code == 7
    assert err.startswith(
        "Error: no answered requests between 2020-01-01T00:00:00+00:00 and "
        "2020-01-02T00:00:00+00:00"
    )
    code, _, err = drift_json(project, capsys, "--since", "1d", "--model-version", "2")
    assert code == 7 and "no answered requests served by model version 2" in err


def test_missing_log_exit_7(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    code = run(["--config", str(config), "drift"])
    err = capsys.readouterr().err
    assert code == 7
    assert f"Error: no request log at {tmp_path / 'data' / 'requests.db'}" in err
    assert not (tmp_path / "data" / "requests.db").exists()  # drift never creates the log


def test_refresh_reference_with_a_reference_file_is_exit_2(tmp_path: Path, capsys) -> None:
    # --reference replaces the version's stored profile, so the refresh was silently
    # ignored: the user believed the MLflow profile had been fetched again.
    config = write_config(tmp_path)
    profile = tmp_path / "profile.json"
    profile.write_text("{}")
    args = ["drift", "--reference", str(profile), "--refresh-reference"]
    code = run(["--config", str(config), *args])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.strip().splitlines() == [
        "Error: --refresh-reference refreshes the version's profile from MLflow; with "
        "--reference PATH that profile is not used: drop one of them",
        "Try 'housing drift -h' for help.",
    ]


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_malformed_time_is_a_usage_error_exit_2(tmp_path: Path, capsys, option: str) -> None:
    config = write_config(tmp_path)
    code = run(["--config", str(config), "drift", option, "last week"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        f"Error: {option} 'last week' is not a time: use a duration such as 30m, 12h, 7d or "
        "2w (units s, m, h, d, w), or an ISO-8601 timestamp such as 2026-01-31 or "
        "2026-01-31T12:00:00Z (no zone means UTC)\nTry 'housing drift -h' for help."
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--since", ""),
        ("--until", ""),
        ("--since", "99999999999d"),
        ("--since", "9" * 400 + "d"),
        ("--until", "1e30h"),
        ("--since", "99999-01-01"),
        ("--until", "9999-12-31T23:59:59-14:00"),
        ("--since", "0001-01-01T00:00:00+14:00"),
    ],
)
def test_empty_or_out_of_range_time_is_a_usage_error_exit_2(
    tmp_path: Path, capsys, option: str, value: str
) -> None:
    config = write_config(tmp_path)
    code = run(["--config", str(config), "drift", option, value])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"Error: {option} {value!r} "), lines
    assert lines[1] == "Try 'housing drift -h' for help."
    assert "30m, 12h, 7d or 2w" in lines[0] and "ISO-8601" in lines[0]
    assert captured.out == ""


def not_a_database(tmp_path: Path, kind: str) -> Path:
    """Something at the request log's path that is not a SQLite database."""
    import os

    path = tmp_path / "data" / "requests.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        path.write_text("ts,request_id\n1,abc\n")
    elif kind == "bytes":
        path.write_bytes(os.urandom(8192))
    elif kind == "short":
        path.write_bytes(b"SQLite")
    else:
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["text", "bytes", "short", "directory"])
def test_a_log_that_is_not_a_database_is_a_data_error_exit_4(
    tmp_path: Path, capsys, kind: str
) -> None:
    config = write_config(tmp_path)
    path = not_a_database(tmp_path, kind)
    before = None if path.is_dir() else path.read_bytes()
    code = run(["--config", str(config), "drift", "--since", "1d"])
    captured = capsys.readouterr()
    assert code == 4, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: the request log {path} "), lines
    assert "not a SQLite database" in lines[0] and "serve.request_log" in lines[0]
    if before is not None:
        assert path.read_bytes() == before  # never overwritten or "repaired"
    assert sorted(p.name for p in path.parent.iterdir()) == ["requests.db"]  # no -wal/-shm


@pytest.mark.parametrize("command", ["drift", "evaluate --live"])
def test_a_log_damaged_past_its_first_page_is_a_data_error_exit_4(
    project, tmp_path: Path, capsys, command: str
) -> None:
    # The header and the schema page read fine; the table pages do not ("database disk
    # image is malformed"): drift and evaluate --live ended in "Error: unexpected
    # DatabaseError" (exit 1).
    damaged = damaged_copy(project["settings"].serve.request_log, tmp_path / "requests.db")
    args = [*command.split(), "--request-log", str(damaged)]
    code = run(["--config", str(project["config"]), *args])
    captured = capsys.readouterr()
    assert code == 4, captured.err
    assert captured.out == "" and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert lines == [
        f"Error: the request log {damaged} is not a usable SQLite database (database disk "
        "image is malformed): move it away, or point serve.request_log, HOUSING_REQUEST_LOG "
        "or --request-log at a SQLite file (`housing serve` creates one where none is)"
    ]


def test_installed_command_exits_6_on_drift(project) -> None:
    exe = Path(sys.executable).parent / "housing"
    a = project["anchor"]
    proc = subprocess.run(
        [
            str(exe),
            "--config",
            str(project["config"]),
            "drift",
            "--since",
            iso(a + 3500),
            "--until",
            iso(a + 3700),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 6, proc.stderr
    assert "MedInc" in proc.stdout and "Dataset drift:" in proc.stdout


# ------------------------------------------------------------- over PostgreSQL
@pytest.fixture
def pg_log(project: dict[str, Any], pg_url: str) -> str:
    """A PostgreSQL log holding exactly the rows (ids included) of the project's SQLite
    log: the same rows in both backends."""
    import sqlite3

    import psycopg

    store.create_log(pg_url)
    names = ["id", *store.ROW_COLUMNS]
    quoted = ", ".join(f'"{n}"' for n in names)
    src = sqlite3.connect(project["settings"].serve.request_log)
    try:
        rows = src.execute(f"SELECT {quoted} FROM requests ORDER BY id").fetchall()
    finally:
        src.close()
    with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY requests ({quoted}) FROM STDIN".encode()) as copy:
            for row in rows:
                copy.write_row(row)
    return pg_url


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("run_id", "created_at")}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("window", "sample_rows", "exit_code"),
    [
        ((-60, 60), None, 0),  # the test split: every row read, no drift
        ((3500, 3700), None, 6),  # MedInc x 1.2: drift
        ((-60, 3700), 1000, 6),  # both frames, sampled down to about 1,000 rows
    ],
)
def test_drift_over_postgresql_equals_drift_over_sqlite(
    project, capsys, pg_log: str, postgres: Any, tmp_path: Path, window, sample_rows, exit_code
) -> None:
    config = project["config"]
    if sample_rows is not None:
        import yaml

        raw = yaml.safe_load(config.read_text())
        raw["drift"] = {**raw.get("drift", {}), "sample_rows": sample_rows}
        config = tmp_path / "sampled.yaml"
        config.write_text(yaml.safe_dump(raw))
    args = ["--config", str(config), "drift", "--json", *window_args(project, *window)]
    results = []
    for extra in ([], ["--request-log", pg_log]):
        code = run([*args, *extra])
        out = capsys.readouterr()
        assert code == exit_code, out.err
        assert postgres.password not in out.out + out.err
        results.append(json.loads(out.out))
    over_sqlite, over_pg = results
    if sample_rows is not None:
        assert over_pg["sampled_rows"] < over_pg["rows"]  # the sampled path was taken
    assert _comparable(over_pg) == _comparable(over_sqlite)  # exactly, every score
    db = store.open_readonly(pg_log)
    assert db is not None
    try:
        latest = store.latest_drift_run(db)  # stored in PostgreSQL, not in the SQLite file
    finally:
        db.close()
    assert latest is not None and latest["id"] == over_pg["run_id"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["wrong password", "refused port", "not postgresql"])
def test_drift_over_a_bad_url_is_one_error_line_exit_3(
    project, capsys, postgres: Any, fault: str
) -> None:
    url = {
        "wrong password": postgres.url().replace(postgres.password, "Wr0ng-pw"),
        "refused port": postgres.url().replace(f":{postgres.port}/", ":1/"),
        "not postgresql": "mysql://housing:Wr0ng-pw@127.0.0.1/db",
    }[fault]
    started = time.monotonic()
    code = run(["--config", str(project["config"]), "drift", "--request-log", url])
    out = capsys.readouterr()
    assert code == 3 and time.monotonic() - started < 15
    assert out.out == "" and len(out.err.strip().splitlines()) == 1, out.err
    assert out.err.startswith("Error: ")
    if fault == "not postgresql":
        assert "--request-log takes a SQLite file path or a postgresql://" in out.err
    else:
        assert ":***@127.0.0.1" in out.err  # the URL is named, its password is not
    assert "Wr0ng-pw" not in out.err and postgres.password not in out.err


@pytest.mark.slow
def test_drift_over_an_empty_postgresql_database_is_no_log_exit_7(
    project, capsys, pg_url: str, postgres: Any
) -> None:
    code = run(["--config", str(project["config"]), "drift", "--request-log", pg_url])
    out = capsys.readouterr()
    assert code == 7, out.err
    assert out.err.startswith("Error: no request log at postgresql://housing:***@127.0.0.1")
    assert postgres.password not in out.err
    db = store.open_readonly(pg_url)
    assert db is not None
    try:
        assert store.latest_drift_run(db) is None  # drift made no schema and stored nothing
        assert "requests" not in store.connection.tables(db)
    finally:
        db.close()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "expected a JSON object with 'columns', got list"),
        ('{"rows": 3}', "'columns' must be an object mapping each column to its summary"),
        ('{"columns": {"MedInc": {}}}', "column 'MedInc' needs 'sample'"),
        ('{"columns": {"MedInc": {"sample": ["a"]}}}', "column 'MedInc' needs 'sample'"),
        ('{"columns": {"MedInc": []}}', "column 'MedInc' must be an object"),
        (
            '{"columns": {"MedInc": {"sample": [1.0, 2.0], "quantiles": "x"}}}',
            "column 'MedInc': 'quantiles' must be a list of finite numbers",
        ),
    ],
)
def test_a_reference_of_the_wrong_shape_is_exit_7_like_an_unreadable_one(
    project, capsys, tmp_path: Path, text: str, problem: str
) -> None:
    profile = tmp_path / "p.json"
    profile.write_text(text)
    args = [*window_args(project, -60, 60), "--reference", str(profile)]
    code, result, err = drift_json(project, capsys, *args)
    assert code == 7 and result == {}
    assert err.startswith(f"Error: cannot read the reference profile {profile}: {problem}"), err
    assert len(err.splitlines()) == 1 and "unexpected" not in err

"""`housing feedback FILE` and `housing evaluate --live` through the real CLI entry point:
exit codes, the exact `Error:` lines, all-or-nothing, --skip-bad, --json."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import answered_row, write_log_rows
from synthetic import write_config

from housing_mlops.cli import run


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Any]:
    """A config whose request log holds requests a (one house), b (a batch of 2 rows),
    c (a shadowed house) and a rejected request."""
    config = write_config(tmp_path, {"promote": {"bootstrap_samples": 200}})
    log = tmp_path / "data" / "requests.db"
    write_log_rows(
        log,
        [
            answered_row("a", ts=100.0, prediction=2.0),
            answered_row("b", 0, ts=101.0, prediction=3.0),
            answered_row("b", 1, ts=101.0, prediction=1.0),
            answered_row("c", ts=102.0, prediction=2.5, shadow_version="2", shadow_prediction=2.2),
        ],
    )
    return {"config": config, "log": log, "tmp": tmp_path}


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _labels(log: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(log)
    try:
        return conn.execute(
            "SELECT request_id, row_index, actual FROM feedback ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def _csv(tmp: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def test_a_file_with_one_bad_row_changes_nothing(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _csv(project["tmp"], "request_id,row_index,actual\na,0,2.1\nb,1,1.2\nb,0,abc\nc,0,2.4\n")
    code, out, err = _cli(capsys, "feedback", str(path), "--config", str(project["config"]))
    assert code == 4
    assert err.strip().splitlines()[-1] == (
        f"Error: feedback file {path}: 1 of 4 rows cannot be applied (invalid 1), so none "
        "was: first row 3 (request_id 'b', row_index 0): actual must be a number; fix the "
        "file, or pass --skip-bad to apply the 3 good rows"
    )
    assert out == ""
    assert _labels(project["log"]) == []

    # --skip-bad: the good rows go in, the bad one is reported (exit 0).
    code, out, err = _cli(
        capsys, "feedback", str(path), "--skip-bad", "--json", "-c", str(project["config"])
    )
    assert code == 0, err
    result = json.loads(out)
    assert (result["applied"], result["invalid"], result["unknown"]) == (3, 1, 0)
    assert result["examples"]["invalid"][0]["position"] == 2
    assert _labels(project["log"]) == [("a", 0, 2.1), ("b", 1, 1.2), ("c", 0, 2.4)]

    # The same file again: every good row is now a duplicate; nothing changes.
    code, out, err = _cli(capsys, "feedback", str(path), "--json", "-c", str(project["config"]))
    assert code == 4
    refused = json.loads(out)  # the counts on stdout under --json, the Error line on stderr
    assert (refused["duplicate"], refused["invalid"], refused["applied"]) == (3, 1, 0)
    assert "(duplicate 3, invalid 1), so none was" in err
    assert len(_labels(project["log"])) == 3


def test_unknown_ids_and_parquet(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = project["tmp"] / "labels.parquet"
    pd.DataFrame({"request_id": ["a", "zz", "b"], "actual": [2.0, 1.0, 3.5]}).to_parquet(path)
    code, _, err = _cli(capsys, "feedback", str(path), "-c", str(project["config"]))
    assert code == 4
    assert "1 of 3 rows cannot be applied (unknown 1)" in err
    assert "first row 2 (request_id 'zz', row_index 0): no answered request row" in err
    code, out, err = _cli(capsys, "feedback", str(path), "--skip-bad", "-c", str(project["config"]))
    assert code == 0, err
    assert "applied" in out and "feedback:" in err  # the table on stdout, progress on stderr
    assert _labels(project["log"]) == [("a", 0, 2.0), ("b", 0, 3.5)]


@pytest.mark.parametrize(
    ("content", "name", "code", "message"),
    [
        ("request_id,price\na,1\n", "x.csv", 4, "lacks the column actual (needed: request_id, "
         "actual; optional: row_index; found: request_id, price)"),
        ("request_id,actual\n", "x.csv", 4, "has no rows"),
        ("a\tb\n", "x.tsv", 4, "use a .csv or .parquet file (got '.tsv')"),
        (None, "missing.csv", 4, "not found"),
    ],
)  # fmt: skip
def test_bad_files_are_exit_4_with_the_reason(
    project: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    name: str,
    code: int,
    message: str,
) -> None:
    path = project["tmp"] / name
    if content is not None:
        path.write_text(content)
    got, out, err = _cli(capsys, "feedback", str(path), "-c", str(project["config"]))
    assert got == code
    assert err.strip().splitlines()[-1].startswith("Error: feedback file")
    assert message in err


def test_trailing_commas_are_read_as_empty_fields_not_as_a_shifted_row(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`a,2.1,` (a spreadsheet's export) made pandas take the ids as the index: every label
    was refused as 'request_id '2.1' ...: actual must be a number'. Now the empty last
    fields are dropped; an extra field that holds a value is a bad file naming the row."""
    path = _csv(project["tmp"], "request_id,actual\na,2.1,\nb,3.4,\n")
    code, out, err = _cli(capsys, "feedback", str(path), "--json", "-c", str(project["config"]))
    assert code == 0, err
    assert json.loads(out)["applied"] == 2
    assert _labels(project["log"]) == [("a", 0, 2.1), ("b", 0, 3.4)]
    assert "Warning" not in err

    shifted = _csv(project["tmp"], "request_id,actual\nc,,\nc,0,2.5\n", "shifted.csv")
    code, out, err = _cli(capsys, "feedback", str(shifted), "-c", str(project["config"]))
    assert code == 4
    assert err.strip().splitlines()[-1] == (
        f"Error: feedback file {shifted}: row 2 has more fields than the header (request_id, "
        "actual): name every column in the first line"
    )
    assert len(_labels(project["log"])) == 2


def test_no_request_log_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    path = _csv(tmp_path, "request_id,actual\na,1\n")
    code, _, err = _cli(capsys, "feedback", str(path), "-c", str(config))
    assert code == 3
    assert err.strip().splitlines()[-1] == (
        f"Error: no request log at {tmp_path / 'data' / 'requests.db'}: nothing to label (serve "
        "the model first, or point serve.request_log, HOUSING_REQUEST_LOG or --request-log at "
        "the log)"
    )


@pytest.mark.parametrize(
    "command", [["feedback", "LABELS"], ["evaluate", "--live"], ["drift"], ["report"]]
)
def test_another_applications_database_is_not_taken_for_the_log(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """`--request-log mlruns/mlflow.db` (the MLflow store, also SQLite): `housing feedback`
    added the log's tables to it (requests, feedback, drift_runs, schema_version), and the
    readers called it a log without traffic. Now exit 4 naming it, the file untouched."""
    other = project["tmp"] / "mlflow.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    labels = _csv(project["tmp"], "request_id,actual\na,2.0\n")
    args = [str(labels) if a == "LABELS" else a for a in command]
    code, _, err = _cli(capsys, *args, "--request-log", str(other), "-c", str(project["config"]))
    assert code == 4, err
    assert err.strip().splitlines()[-1] == (
        f"Error: the request log {other} is a SQLite database of something else (tables "
        "alembic_version, experiments), not a request log: point serve.request_log, "
        "HOUSING_REQUEST_LOG or --request-log at the request log (data/requests.db by default)"
    )
    assert other.read_bytes() == before
    assert sorted(p.name for p in project["tmp"].iterdir() if p.name.startswith("mlflow")) == [
        "mlflow.db"
    ]  # no -wal or -shm beside it


# ----------------------------------------------------------------- evaluate --live
def test_evaluate_live_without_labels_says_so_and_exits_0(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "evaluate", "--live", "-c", str(project["config"]))
    assert code == 0, err
    assert out.startswith(f"No labelled requests in {project['log']} (all time)")
    code, out, _ = _cli(capsys, "evaluate", "--live", "--json", "-c", str(project["config"]))
    assert code == 0
    assert json.loads(out)["labelled_rows"] == 0 and json.loads(out)["models"] == []


def test_evaluate_live_without_a_log_says_there_is_no_log(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped --request-log read "No labelled requests in … (all time): send true values
    # with POST /feedback …", sending users to label requests logged elsewhere.
    missing = project["tmp"] / "typo.db"
    code, out, err = _cli(
        capsys, "evaluate", "--live", "--request-log", str(missing), "-c", str(project["config"])
    )
    assert code == 0, err
    assert out.replace("\n", " ").strip() == (
        f"No request log at {missing}: no request is logged, so none is labelled (serve "
        "traffic with `housing serve` first, or point serve.request_log, HOUSING_REQUEST_LOG "
        "or --request-log at the log)."
    )
    code, out, _ = _cli(
        capsys, "evaluate", "--live", "--json", "--request-log", str(missing), "-c",
        str(project["config"]),
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert result["request_log_exists"] is False and result["labelled_rows"] == 0
    assert not missing.exists()  # reading never creates it


def test_evaluate_live_table_and_json(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _csv(project["tmp"], "request_id,row_index,actual\na,0,2.5\nb,0,3.0\nb,1,2.0\nc,0,2.0\n")
    assert _cli(capsys, "feedback", str(path), "-c", str(project["config"]))[0] == 0
    code, out, err = _cli(capsys, "evaluate", "--live", "--json", "-c", str(project["config"]))
    assert code == 0, err
    result = json.loads(out)
    assert result["labelled_rows"] == 4 and result["bootstrap_samples"] == 200
    champion, shadow = result["models"]
    # Errors of version 1: 0.5, 0, 1, 0.5 -> RMSE sqrt(1.5/4); MAE 0.5.
    assert (champion["model_version"], champion["role"], champion["rows"]) == ("1", "champion", 4)
    assert champion["rmse"] == pytest.approx((1.5 / 4) ** 0.5)
    assert champion["mae"] == pytest.approx(0.5)
    assert (shadow["model_version"], shadow["role"], shadow["scored"]) == (
        "2",
        "challenger",
        "shadow",
    )
    assert shadow["rows"] == 1
    assert shadow["rmse"] == pytest.approx(0.2) and shadow["rmse_ci"] is None  # one row
    (paired,) = result["comparisons"]
    assert paired["rows"] == 1 and paired["difference"] == pytest.approx(0.2 - 0.5)

    code, out, _ = _cli(capsys, "evaluate", "--live", "-c", str(project["config"]))
    assert code == 0
    assert "housing evaluate --live: 4 labelled rows" in out and "challenger (shadow)" in out
    assert "challenger vs champion" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--live", "--since", "yesterday"], "Error: --since 'yesterday' is not a time"),
        (["--live", "--version", "1"], "Error: --live judges every served version"),
        (["--since", "7d"], "Error: --since and --request-log go with --live"),
        # A future --since (a mistyped year) is an empty window, as for drift, not "No
        # labelled requests ... send true values".
        (["--live", "--since", "2999-01-01"], "Error: the window is empty: --since (2999-"),
    ],
)
def test_evaluate_live_usage_errors(
    project: dict[str, Any], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = _cli(capsys, "evaluate", *args, "-c", str(project["config"]))
    assert code == 2
    assert err.startswith(message)

"""`housing predict` with the local engine: what a user scoring a file sees.

A real store (the session's synthetic candidates, hist_gb as champion), real files, the
real command; predictions compared with ``pipeline.predict`` and with a running
``/predict`` service; every bad input an `Error:` line and its exit code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ServerThread, champion_config, ready, wait_until
from pydantic import ValidationError

from housing_mlops import registry
from housing_mlops.cli import run
from housing_mlops.columns import FEATURES
from housing_mlops.config import load_config
from housing_mlops.predict import make_job, read_lineage
from housing_mlops.predict import run as run_predict
from housing_mlops.serving.schemas import build_request_models, format_errors
from housing_mlops.validation import feature_ranges, invalid_rows

ADDED = ["prediction", "prediction_usd", "model_version", "run_id", "row_id"]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return champion_config(tmp_path_factory)


@pytest.fixture(scope="module")
def test_split(config: Path) -> Path:
    settings = load_config(config)
    return Path(settings.paths.processed_dir) / "test.parquet"


@pytest.fixture(scope="module")
def pipeline(config: Path) -> Any:
    settings = load_config(config)
    return registry.load_model(settings, registry.resolve(settings))


def _predict(config: Path, *args: str) -> int:
    return run(["-c", str(config), "predict", *args])


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _frame(n: int = 50, seed: int = 7) -> pd.DataFrame:
    from synthetic import make_frame

    return make_frame(n, seed=seed)


# ------------------------------------------------------------------- the happy path
def test_scores_the_test_split_as_is_in_order_with_lineage(
    config: Path, test_split: Path, pipeline: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _predict(config, str(test_split), "--json") == 0
    summary = _json(capsys)
    out = test_split.with_name("test.predictions.parquet")
    assert summary["output"] == str(out)
    table = pq.read_table(out)
    source = pq.read_table(test_split)
    assert table.column_names == [*source.column_names, *ADDED]
    frame = table.to_pandas()
    expected = source.to_pandas()
    # Columns beyond the features (the true value) pass through, rows keep their order.
    np.testing.assert_array_equal(frame["MedHouseVal"], expected["MedHouseVal"])
    np.testing.assert_array_equal(frame["row_id"], np.arange(len(expected)))
    want = pipeline.predict(expected[FEATURES])
    assert np.abs(frame["prediction"].to_numpy() - want).max() <= 1e-9
    np.testing.assert_allclose(frame["prediction_usd"], np.round(want * 100_000, 2))
    assert set(frame["model_version"]) == {"2"}
    assert summary["rows_in"] == summary["scored"] == len(expected)
    assert summary["rejected"] == 0 and summary["model"]["version"] == "2"
    # The rate is over the scoring time, not the model's load: a small file's rate is real.
    assert 0 < summary["scoring_seconds"] < summary["seconds"]
    # scoring_seconds is rounded to the millisecond, so the rate is checked within that rounding.
    low = len(expected) / (summary["scoring_seconds"] + 0.0005)
    high = len(expected) / max(summary["scoring_seconds"] - 0.0005, 1e-9)
    assert low * 0.999 <= summary["rows_per_s"] <= high * 1.001
    ref = registry.resolve(load_config(config))
    lineage = read_lineage(out)
    assert lineage["model_version"] == "2" and lineage["run_id"] == ref.run_id
    assert lineage["data_version"] == ref.data_version
    assert lineage["input_sha256"] == hashlib.sha256(test_split.read_bytes()).hexdigest()
    assert pq.read_schema(out).metadata[b"housing.model_version"] == b"2"


def test_predictions_equal_the_service(config: Path, test_split: Path, tmp_path: Path) -> None:
    from housing_mlops.serving.app import create_app

    out = tmp_path / "scored.parquet"
    assert _predict(config, str(test_split), "-o", str(out)) == 0
    frame = pq.read_table(out).to_pandas()
    rows = frame[FEATURES].head(100).to_dict(orient="records")
    settings = load_config(config)
    with ServerThread(create_app(settings)) as server:
        wait_until(lambda: ready(server.base), 60, "the service to load the champion")
        answer = httpx.post(f"{server.base}/predict", json={"instances": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == "2"
    served = np.array(body["predictions"])
    assert np.abs(frame["prediction"].head(100).to_numpy() - served).max() <= 1e-9
    assert frame["prediction_usd"].head(100).tolist() == body["predictions_usd"]


def test_csv_in_csv_out_and_model_version(
    config: Path, tmp_path: Path, pipeline: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _frame().assign(listing_id=[f"L{i}" for i in range(50)])
    src = tmp_path / "county.csv"
    frame.to_csv(src, index=False)
    out = tmp_path / "scored.csv"
    assert _predict(config, str(src), "-o", str(out), "--model-version", "1", "--json") == 0
    assert _json(capsys)["model"]["version"] == "1"
    got = pd.read_csv(out)
    assert got.columns.tolist() == [*frame.columns, *ADDED]
    assert got["listing_id"].tolist() == frame["listing_id"].tolist()
    ridge = registry.load_model(load_config(config), registry.resolve(load_config(config), 1))
    # CSV holds the shortest repr of each float, so it reads back exactly.
    assert np.abs(got["prediction"].to_numpy() - ridge.predict(frame[FEATURES])).max() <= 1e-9


def test_directory_and_glob_of_parts_keep_part_order(
    config: Path, tmp_path: Path, pipeline: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _frame(90)
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(3):
        frame.iloc[i * 30 : (i + 1) * 30].to_parquet(parts / f"part-{i:05d}.parquet")
    (parts / "_SUCCESS").write_text("")
    want = pipeline.predict(frame[FEATURES])
    assert _predict(config, str(parts), "--json") == 0
    out = tmp_path / "parts.predictions.parquet"
    assert _json(capsys)["input_files"] == 3
    got = pq.read_table(out).to_pandas()
    assert np.abs(got["prediction"].to_numpy() - want).max() <= 1e-9
    np.testing.assert_array_equal(got["row_id"], np.arange(90))
    glob_out = tmp_path / "glob.parquet"
    assert _predict(config, str(parts / "part-*.parquet"), "-o", str(glob_out)) == 0
    assert pq.read_table(glob_out).column("prediction").to_pylist() == got["prediction"].tolist()


def test_a_quoted_glob_under_the_home_folder_is_read(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The README quotes globs ('landing/*.parquet'), which keeps the shell from expanding
    # a leading ~ too: '~/landing/*.parquet' matched nothing (exit 4).
    monkeypatch.setenv("HOME", str(tmp_path))
    parts = tmp_path / "landing"
    parts.mkdir()
    _frame(40).to_parquet(parts / "part-0.parquet")
    args = ["-o", str(tmp_path / "scored.parquet"), "--on-error", "skip", "--json"]
    assert _predict(config, "~/landing/*.parquet", *args) == 0
    summary = _json(capsys)
    assert summary["input_files"] == 1 and summary["rows_in"] == 40


def test_a_glob_runs_twice_with_its_default_output_beside_the_parts(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = _with_bad_rows(tmp_path)
    parts = tmp_path / "parts"
    parts.mkdir()
    src.rename(parts / "listings.parquet")
    pattern = str(parts / "*.parquet")
    for _ in range(2):  # the first run's output and rejects are not inputs of the second
        assert _predict(config, pattern, "--on-error", "skip", "--json") == 0
        summary = _json(capsys)
        assert summary["output"] == str(parts / "predictions.parquet")
        assert summary["input_files"] == 1 and summary["rows_in"] == 200
        assert (summary["scored"], summary["rejected"]) == (197, 3)
    assert sorted(p.name for p in parts.iterdir()) == [
        "listings.parquet",
        "predictions.parquet",
        "predictions.rejects.parquet",
    ]


@pytest.mark.parametrize("form", ["folder", "glob"])
def test_a_part_that_is_an_earlier_output_is_refused_not_scored_again(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    # The glob's default output lands among the parts; read as a folder afterwards (or by a
    # glob that matches another output name), the dataset took the first part's columns
    # for all, so the earlier predictions were scored again as input rows: 90 rows in,
    # 180 out, without a word.
    parts = tmp_path / "parts"
    parts.mkdir()
    _frame(90).to_parquet(parts / "part-00000.parquet")
    assert _predict(config, str(parts / "*.parquet"), "-o", str(parts / "scored.parquet")) == 0
    capsys.readouterr()
    spec = str(parts) if form == "folder" else str(parts / "*.parquet")
    out = tmp_path / "again.parquet"
    assert _predict(config, spec, "-o", str(out)) == 4
    assert _error(capsys) == (
        f"Error: part {parts}/scored.parquet of {spec} already has the column(s) prediction, "
        "prediction_usd, model_version, run_id, row_id that `housing predict` adds: rename or "
        "drop them (is it a predictions file?)"
    )
    assert not out.exists()


def test_a_part_lacking_a_feature_is_refused_not_read_as_nulls(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    frame = _frame(60)
    frame.iloc[:30].to_parquet(parts / "part-0.parquet")
    frame.iloc[30:].drop(columns=["Population"]).to_parquet(parts / "part-1.parquet")
    out = tmp_path / "o.parquet"
    assert _predict(config, str(parts), "-o", str(out), "--on-error", "skip") == 4
    assert _error(capsys).startswith(
        f"Error: part {parts}/part-1.parquet of {parts} lacks the feature column(s) Population"
    )
    assert not out.exists()


# ---------------------------------------------------------------------- bad rows
def _with_bad_rows(tmp_path: Path, n: int = 200) -> tuple[Path, pd.DataFrame]:
    frame = _frame(n)
    frame.loc[3, "MedInc"] = -1.0
    frame.loc[150, "Latitude"] = 50.0
    # Bedrooms above rooms, each inside its own range.
    frame.loc[[150, 170], "AveRooms"] = 1.8
    frame.loc[[150, 170], "AveBedrms"] = 1.9
    src = tmp_path / "listings.parquet"
    frame.to_parquet(src)
    return src, frame


def test_on_error_fail_names_rows_and_keeps_the_previous_output(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = _with_bad_rows(tmp_path)
    out = tmp_path / "scored.parquet"
    out.write_bytes(b"previous output")
    assert _predict(config, str(src), "-o", str(out)) == 4
    line = _error(capsys)
    assert line.startswith(
        "Error: input rows break the input rules of /predict: row 3: MedInc: Input should be "
        "greater than 0; "
    )
    assert "; row 150: AveBedrms: AveBedrms (1.9) must not be greater than AveRooms (1.8);" in line
    assert "; Latitude: Input should be less than or equal to" in line
    assert "Nothing was written" in line
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listings.parquet", "scored.parquet"]


def test_many_batches_scored_in_parallel_keep_row_order(
    config: Path, test_split: Path, pipeline: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four cores: the test split in 7-row batches is scored four batches at a time; the
    # output must still be every row once, in input order, each with its own prediction.
    monkeypatch.setattr("housing_mlops.predict.job.os.cpu_count", lambda: 4)
    out = tmp_path / "scored.parquet"
    job = dataclasses.replace(make_job(str(test_split), out), batch_rows=7)
    run_predict(load_config(config), job)
    frame = pq.read_table(out).to_pandas()
    expected = pd.read_parquet(test_split)
    assert len(expected) > 10 * 7
    np.testing.assert_array_equal(frame["row_id"], np.arange(len(expected)))
    np.testing.assert_array_equal(frame[FEATURES].to_numpy(), expected[FEATURES].to_numpy())
    want = pipeline.predict(expected[FEATURES])
    assert np.abs(frame["prediction"].to_numpy() - want).max() <= 1e-9


def test_in_order_yields_in_input_order_and_raises_in_turn() -> None:
    import time

    from housing_mlops.predict.scoring import in_order

    def slow_first(i: int) -> int:
        if i == 3:
            raise ValueError("item 3")
        time.sleep(0.05 if i % 2 == 0 else 0.0)  # even items finish after odd ones
        return i * 10

    got: list[int] = []
    with in_order(2) as pool, pytest.raises(ValueError, match="item 3"):
        got.extend(pool(slow_first, range(8)))
    assert got == [0, 10, 20]
    with in_order(3) as pool:
        assert list(pool(lambda i: i * 10, range(20))) == [i * 10 for i in range(20)]


def test_failure_after_written_batches_leaves_no_partial_file(config: Path, tmp_path: Path) -> None:
    from housing_mlops.errors import DataError

    src, _ = _with_bad_rows(tmp_path)
    frame = pd.read_parquet(src)
    frame.loc[3, "MedInc"] = 2.0  # the first bad row is now 150: three batches are written
    frame.to_parquet(src)
    out = tmp_path / "scored.parquet"
    job = dataclasses.replace(make_job(str(src), out), batch_rows=50)
    with pytest.raises(DataError, match="row 150: AveBedrms"):
        run_predict(load_config(config), job)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listings.parquet"]


def test_on_error_skip_writes_rejects_with_reasons(
    config: Path, tmp_path: Path, pipeline: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    src, frame = _with_bad_rows(tmp_path)
    out = tmp_path / "scored.parquet"
    rejects = tmp_path / "rejects.csv"
    args = [str(src), "-o", str(out), "--on-error", "skip", "--rejects", str(rejects), "--json"]
    assert _predict(config, *args) == 0
    summary = _json(capsys)
    assert (summary["rows_in"], summary["scored"], summary["rejected"]) == (200, 197, 3)
    assert summary["rejects"] == str(rejects)
    got = pq.read_table(out).to_pandas()
    good = frame.drop(index=[3, 150, 170])
    np.testing.assert_array_equal(got["row_id"], good.index.to_numpy())
    assert np.abs(got["prediction"].to_numpy() - pipeline.predict(good[FEATURES])).max() <= 1e-9
    refused = pd.read_csv(rejects)
    assert refused["row_id"].tolist() == [3, 150, 170]
    assert refused["MedInc"].iloc[0] == -1.0
    assert refused["error"].iloc[0] == "MedInc: Input should be greater than 0"
    # Latitude out of range: the bedrooms rule is still judged (both its fields are valid).
    assert refused["error"].iloc[1].startswith("AveBedrms: AveBedrms (")
    assert "Latitude: Input should be less than or equal to" in refused["error"].iloc[1]


@pytest.mark.parametrize("with_profile", [False, True], ids=["physical", "profile"])
def test_validation_matches_the_service_schema_row_by_row(with_profile: bool) -> None:
    """One definition, two enforcers: the numpy rules reject exactly the rows and fields
    (with the same reasons) that the pydantic models of /predict reject."""
    from housing_mlops.drift import build_profile

    train = _frame(300, seed=5)
    profile = (
        build_profile({c: train[c].to_numpy() for c in FEATURES}, 50) if with_profile else None
    )
    rng = np.random.default_rng(0)
    X = np.array(_frame(400, seed=11)[FEATURES].to_numpy(), dtype=np.float64)
    ranges = feature_ranges(profile)
    # Perturb cells to every kind of boundary and bad value.
    specials = [0.0, -1e-9, 1e-9, -0.5, 42.1, 42.1000001, 32.5, -124.5, -114.0, np.nan, np.inf]
    for _ in range(600):
        X[rng.integers(0, len(X)), rng.integers(0, 8)] = specials[rng.integers(0, len(specials))]
    X[5, 3] = X[5, 2] + 0.5  # bedrooms above rooms
    X[6, 3] = X[6, 2]  # equal: allowed
    mask, rejections = invalid_rows(X, ranges)
    house = build_request_models(profile).house
    ours = {r.row: dict(r.errors) for r in rejections}
    for i, row in enumerate(X):
        try:
            house.model_validate(dict(zip(FEATURES, row.tolist(), strict=True)))
            theirs: dict[str, str] = {}
        except ValidationError as exc:
            errors = [dict(e) for e in exc.errors()]
            theirs = {e["field"]: e["msg"] for e in format_errors(errors, 1)}
        assert ours.get(i, {}) == theirs, (i, row)
        assert bool(mask[i]) == bool(theirs)
    assert mask.sum() > 100 and (~mask).sum() > 20
    # The training ranges are in force, not only the physical bounds.
    assert with_profile == (ranges["MedInc"].le is not None)


# --------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (lambda d: d / "nope.parquet", 4, "Error: input {d}/nope.parquet does not exist"),
        (
            lambda d: (d / "empty_dir").mkdir() or d / "empty_dir",
            4,
            "Error: input directory {d}/empty_dir holds no Parquet files (*.parquet)",
        ),
        (
            lambda d: (d / "empty.csv").write_text("") and None or d / "empty.csv",
            4,
            "Error: input {d}/empty.csv is empty (0 bytes)",
        ),
        (
            lambda d: (d / "header.csv").write_text(",".join(FEATURES) + "\n") and d / "header.csv",
            4,
            "Error: input {d}/header.csv holds no rows",
        ),
        (
            lambda d: (
                _frame().drop(columns=["AveOccup", "Latitude"]).to_csv(d / "c.csv") or d / "c.csv"
            ),
            4,
            "Error: {d}/c.csv lacks the feature column(s) AveOccup, Latitude (needed: "
            + ", ".join(FEATURES)
            + "; other columns pass through)",
        ),
        (
            lambda d: _frame().assign(MedInc="high").to_parquet(d / "s.parquet") or d / "s.parquet",
            4,
            "Error: column MedInc of {d}/s.parquet holds text values, not numbers "
            "(the features must be numeric columns)",
        ),
        (
            lambda d: (d / "x.json").write_text("{}") and d / "x.json",
            4,
            "Error: input {d}/x.json must end in .parquet or .csv (the extension sets the format)",
        ),
    ],
    ids=[
        "missing",
        "dir-no-parquet",
        "empty-file",
        "header-only",
        "missing-cols",
        "strings",
        "json",
    ],
)
def test_bad_input_is_one_error_line(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Any,
    code: int,
    message: str,
) -> None:
    path = make(tmp_path)
    assert _predict(config, str(path), "-o", str(tmp_path / "o.parquet")) == code
    assert _error(capsys) == message.format(d=tmp_path)
    assert not (tmp_path / "o.parquet").exists()


def test_a_csv_cell_that_is_not_a_number_is_exit_4(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _frame().astype({"HouseAge": object})
    frame.loc[7, "HouseAge"] = "old"
    frame.to_csv(tmp_path / "t.csv", index=False)
    assert _predict(config, str(tmp_path / "t.csv"), "-o", str(tmp_path / "o.parquet")) == 4
    line = _error(capsys)
    assert line.startswith(f"Error: cannot read {tmp_path}/t.csv: ")
    assert "HouseAge" in line or "'old'" in line


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-o", "{d}/no/such/dir/o.parquet"], 2, "cannot write --output {d}/no/such/dir/o.parquet"),
        (["-o", "{d}/o.txt"], 2, "--output {d}/o.txt must end in .parquet or .csv"),
        (["--model-version", "1", "--alias", "champion"], 2, "exclusive"),
        (["--engine", "dask"], 2, "--engine must be one of local, spark"),
        (["--on-error", "ignore"], 2, "--on-error must be one of fail, skip"),
        (["--rejects", "{d}/r.csv"], 2, "--rejects needs --on-error skip"),
        (["--model-version", "9"], 5, "has no version 9"),
        (["--alias", "challenger"], 5, "no model has the alias 'challenger' yet: run "
         "`housing promote --to challenger` first"),
        # It said "run `housing promote` first", which never sets an alias of that name.
        (["--alias", "bogus"], 5, "no model has the alias 'bogus' yet: `housing promote` "
         "sets only champion, challenger and previous-champion (aliases in use: champion): "
         "name one of them, or a version with --model-version N"),
    ],
)  # fmt: skip
def test_bad_options_and_models(
    config: Path,
    test_split: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    args = [a.format(d=tmp_path) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "o.parquet")]
    assert _predict(config, str(test_split), *args) == code
    assert message.format(d=tmp_path) in _error(capsys)
    assert not (tmp_path / "o.parquet").exists()


def test_output_under_a_file_is_exit_2(
    config: Path, test_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert _predict(config, str(test_split), "-o", str(blocker / "o.parquet")) == 2
    assert _error(capsys) == (
        f"Error: cannot write --output {blocker}/o.parquet: the folder {blocker} does not exist"
    )


def test_an_empty_input_is_a_usage_error_not_the_current_folder(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `housing predict "$FILE"` with FILE unset: "" read as the current folder, so every
    # Parquet file under it was scored and the output written into its parent, exit 0.
    work = tmp_path / "work"
    work.mkdir()
    _frame(10).to_parquet(work / "part.parquet")
    monkeypatch.chdir(work)
    assert _predict(config, "", "--on-error", "skip") == 2
    assert capsys.readouterr().err.splitlines() == [
        "Error: INPUT is empty: name a CSV or Parquet file, a folder or a quoted glob",
        "Try 'housing predict -h' for help.",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["work"]  # nothing beside the folder
    assert [p.name for p in work.iterdir()] == ["part.parquet"]


def test_an_unquoted_glob_says_to_quote_it(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `housing predict data/*.parquet` without quotes: the shell passes every match, and
    # Click's "unexpected extra arguments" alone did not say what to type instead.
    parts = [tmp_path / f"part-{i}.parquet" for i in range(3)]
    for part in parts:
        _frame(10).to_parquet(part)
    assert _predict(config, *map(str, parts)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"Error: Got unexpected extra argument(s) ({parts[1]} {parts[2]}): housing predict reads "
        "one input: quote a glob ('data/*.parquet') so that housing expands it, or name the "
        "folder",
        "Try 'housing predict -h' for help.",
    ]
    assert not (tmp_path / "predictions.parquet").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("option", ["-o", "--rejects"])
def test_an_output_folder_no_one_can_write_is_exit_2_before_scoring(
    config: Path, test_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    # /proc takes no new file, not even from root (whom os.access lets through): the run
    # must say so up front, not score the whole input and fail on an unexpected OSError.
    target = "/proc/housing-predict.parquet"
    args = ["-o", target] if option == "-o" else ["-o", str(tmp_path / "o.parquet")]
    if option == "--rejects":
        args += ["--on-error", "skip", "--rejects", target]
    assert _predict(config, str(test_split), *args) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    what = "--output" if option == "-o" else "--rejects"
    assert lines[0].startswith(
        f"Error: cannot write {what} {target}: the folder /proc is not writable ("
    ), err
    assert lines[1:] == ["Try 'housing predict -h' for help."]
    assert "predict: loading the model" not in err  # refused before any scoring
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs RLIMIT_FSIZE")
def test_an_output_write_that_fails_midway_is_exit_2_and_keeps_the_previous_file(
    config: Path, tmp_path: Path
) -> None:
    # A full disk, met after the scoring started: a file-size limit (RLIMIT_FSIZE, EFBIG;
    # Python ignores SIGXFSZ) above every file of the store, so the model still loads,
    # and an input whose CSV output is larger than it.
    import resource
    import subprocess

    from helpers import HOUSING

    store = Path(load_config(config).mlflow.artifact_location)
    limit = max(f.stat().st_size for f in store.rglob("*") if f.is_file()) + (1 << 20)
    src = tmp_path / "listings.parquet"
    frame = _frame(2000)
    pd.concat([frame] * (limit // (2000 * 60) + 1), ignore_index=True).to_parquet(src)
    out = tmp_path / "scored.csv"
    out.write_text("the previous output\n")

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [str(HOUSING), "-c", str(config), "predict", str(src), "-o", str(out)]
    cmd += ["--compile", "never", "--on-error", "skip"]  # _frame has a few rows out of range
    done = subprocess.run(cmd, preexec_fn=limited, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: cannot write --output {out}: ")
    assert "File too large" in errors[0], errors[0]
    assert done.stderr.rstrip().endswith("Try 'housing predict -h' for help.")
    assert out.read_text() == "the previous output\n"  # untouched
    # Neither a partial output nor a rejects file (nor their temporary files) is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listings.parquet", "scored.csv"]


def test_ctrl_c_while_scoring_says_interrupted_exit_130_and_writes_nothing(
    config: Path, tmp_path: Path
) -> None:
    # Typer turned the KeyboardInterrupt into a bare exit 130: the command stopped in the
    # middle of its progress lines without a word.
    import signal
    import subprocess
    import time

    from helpers import HOUSING

    src = tmp_path / "listings.parquet"
    pd.concat([_frame(2000)] * 100, ignore_index=True).to_parquet(src)
    out = tmp_path / "scored.parquet"
    out.write_bytes(b"the previous output")
    cmd = [str(HOUSING), "-c", str(config), "predict", str(src), "-o", str(out)]
    cmd += ["--compile", "never", "--on-error", "skip"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # progress lines, one per stage
        seen.append(line)
        if line.startswith("predict: scoring"):
            break
        assert time.monotonic() < deadline, seen
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(seen) + rest
    assert rest.strip().splitlines()[-1:] == ["Error: interrupted"], rest
    assert "Traceback" not in rest
    assert out.read_bytes() == b"the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listings.parquet", "scored.parquet"]


@pytest.mark.parametrize(
    ("source", "args", "message"),
    [
        # --rejects naming the input: the run would replace the input with its rejects.
        (
            "in.parquet",
            ["--rejects", "{d}/in.parquet"],
            "--rejects {d}/in.parquet is the input file: choose another path",
        ),
        # The default rejects (OUTPUT.rejects.parquet) happens to be the input.
        (
            "o.rejects.parquet",
            [],
            "--rejects {d}/o.rejects.parquet is the input file: choose another path",
        ),
        (
            "in.parquet",
            ["--rejects", "{d}/o.parquet"],
            "--rejects and --output must be different files",
        ),
    ],
)
def test_rejects_never_replace_the_input_or_the_output(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
    args: list[str],
    message: str,
) -> None:
    src, _ = _with_bad_rows(tmp_path)
    src = src.rename(tmp_path / source)
    before = src.read_bytes()
    args = [a.format(d=tmp_path) for a in args]
    code = _predict(
        config, str(src), "-o", str(tmp_path / "o.parquet"), "--on-error", "skip", *args
    )
    assert code == 2
    assert _error(capsys) == f"Error: {message.format(d=tmp_path)}"
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [source]


@pytest.mark.parametrize(
    ("source", "args", "message"),
    [
        # A folder named like a Parquet file (Spark's output shape) as input and output:
        # the old output is removed whole when the new one is in place, the input with it.
        ("{d}/ds.parquet", ["-o", "{d}/ds.parquet"], "--output {d}/ds.parquet is the input folder"),
        (
            "{d}/ds.parquet",
            ["-o", "{d}/ds.parquet/scored.parquet"],
            "--output {d}/ds.parquet/scored.parquet is inside the input folder {d}/ds.parquet",
        ),
        (
            "{d}/ds.parquet/*.parquet",
            ["-o", "{d}/ds.parquet"],
            "--output {d}/ds.parquet holds the input file {d}/ds.parquet/a.parquet",
        ),
        (
            "{d}/ds.parquet",
            ["-o", "{d}/o.parquet", "--on-error", "skip", "--rejects", "{d}/ds.parquet"],
            "--rejects {d}/ds.parquet is the input folder",
        ),
    ],
)
def test_an_output_over_an_input_folder_is_exit_2_and_the_input_stays(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
    args: list[str],
    message: str,
) -> None:
    folder = tmp_path / "ds.parquet"
    folder.mkdir()
    frame = _frame(40)
    frame.iloc[:20].to_parquet(folder / "a.parquet")
    frame.iloc[20:].to_parquet(folder / "b.parquet")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    args = [a.format(d=tmp_path) for a in args]
    assert _predict(config, source.format(d=tmp_path), *args) == 2
    line = _error(capsys)
    assert line.startswith(f"Error: {message.format(d=tmp_path)}: choose "), line
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds.parquet"]


def test_spark_engine_without_pyspark_names_the_install_command(
    config: Path,
    test_split: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Simulated absence (the extra may be installed here): `import pyspark` fails.
    monkeypatch.setitem(sys.modules, "pyspark", None)
    out = tmp_path / "o.parquet"
    assert _predict(config, str(test_split), "-o", str(out), "--engine", "spark") == 3
    assert _error(capsys) == (
        "Error: --engine spark needs the spark extra: pip install 'housing-mlops[spark]' "
        "(and Java 17: apt-get install openjdk-17-jre-headless on Debian)"
    )


def test_nulls_are_rejected_rows_not_a_crash(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pa.Table.from_pandas(_frame(20), preserve_index=False)
    med = table.column("MedInc").to_pylist()
    med[4] = None
    table = table.set_column(0, "MedInc", pa.array(med, pa.float64()))
    pq.write_table(table, tmp_path / "n.parquet")
    out = tmp_path / "o.parquet"
    rejects = tmp_path / "r.parquet"
    args = ["-o", str(out), "--on-error", "skip", "--rejects", str(rejects), "--json"]
    assert _predict(config, str(tmp_path / "n.parquet"), *args) == 0
    assert _json(capsys)["rejected"] == 1
    refused = pq.read_table(rejects).to_pandas()
    assert refused["row_id"].tolist() == [4]
    assert refused["error"].iloc[0].startswith("MedInc: Input should be a valid number")


def test_a_previous_output_is_replaced_whole_even_a_spark_folder(
    config: Path, test_split: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scored.parquet"
    out.mkdir()  # what the Spark engine leaves: a folder of parts
    (out / "part-00000.parquet").write_bytes(b"old part")
    assert _predict(config, str(test_split), "-o", str(out)) == 0
    assert out.is_file() and pq.read_table(out).num_rows == pq.read_table(test_split).num_rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.parquet"]


@pytest.mark.parametrize("name", ["scored.csv", "scored.parquet"])
def test_a_previous_spark_csv_or_parquet_folder_is_replaced(
    config: Path, test_split: Path, tmp_path: Path, name: str
) -> None:
    out = tmp_path / name
    out.mkdir()  # what the Spark engine leaves: a folder of parts, with Spark's markers
    suffix = out.suffix
    (out / f"part-00000-1b2c-c000{suffix}").write_bytes(b"old part")
    (out / f".part-00000-1b2c-c000{suffix}.crc").write_bytes(b"crc")
    (out / "_SUCCESS").write_bytes(b"")
    assert _predict(config, str(test_split), "-o", str(out)) == 0
    assert out.is_file()
    rows = pq.read_table(test_split).num_rows
    got = pd.read_csv(out) if suffix == ".csv" else pq.read_table(out).to_pandas()
    assert len(got) == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_folder_that_is_not_an_earlier_output_is_never_replaced(
    config: Path, test_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scored.csv"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _predict(config, str(test_split), "-o", str(out)) == 2
    assert _error(capsys) == (
        f"Error: cannot write --output {out}: it is a directory, not an earlier output of "
        "`housing predict` (Spark's part-* files): choose another path"
    )
    assert (out / "notes.txt").read_text() == "mine"


def test_the_default_rejects_file_takes_the_outputs_format(tmp_path: Path) -> None:
    """The README said the rejects went to OUTPUT.rejects.parquet whatever the output;
    beside a CSV output they are CSV (`scored.rejects.csv`), as `-h` says."""
    from housing_mlops.predict import make_job

    source = tmp_path / "in.csv"
    source.write_text("MedInc\n1\n")
    for name, expected in (
        ("scored.csv", "scored.rejects.csv"),
        ("s.parquet", "s.rejects.parquet"),
    ):
        job = make_job(str(source), tmp_path / name, on_error="skip")
        assert job.rejects == tmp_path / expected
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "`scored.rejects.csv` for `-o scored.csv`" in readme

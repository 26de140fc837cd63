"""Compiled trees (inference.compiled): exactly LightGBM's numbers, or not used at all.

Real LightGBM boosters, really compiled with the machine's C compiler (``cc``; CI has gcc)
and loaded; the command `housing predict --compile ...` on a real registry. The cases that
matter are the ones a code generator gets wrong: a split's missing type (None, Zero, NaN),
inputs at a threshold, tiny and NaN inputs, and doubles whose low 32 bits are all ones
(Treelite/TL2cgen read those as "missing": the reason this module exists).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import champion_config, register_champion

from housing_mlops import registry
from housing_mlops.cli import run
from housing_mlops.columns import FEATURES
from housing_mlops.config import CandidateConfig, load_config
from housing_mlops.inference import compiled

_NO_CC = shutil.which(os.environ.get("CC") or "cc") is None
if _NO_CC and os.environ.get("HOUSING_REQUIRE_CC") == "1":  # CI: .ci/run installs gcc
    raise RuntimeError("HOUSING_REQUIRE_CC=1 but there is no C compiler (cc)")
pytestmark = pytest.mark.skipif(_NO_CC, reason="no C compiler (cc): apt-get install gcc")


def _all_ones_low_word(value: float) -> float:
    """A double next to ``value`` (same sign, exponent and high mantissa bits) whose low 32
    bits are all ones, e.g. 225.99999999999997 for 226.0."""
    (bits,) = struct.unpack("<Q", struct.pack("<d", value))
    if bits & 0xFFFFFFFF == 0:
        bits -= 1  # 226.0 -> the double just below it: low word all ones already
    (out,) = struct.unpack("<d", struct.pack("<Q", bits | 0xFFFFFFFF))
    return float(out)


def _booster(kind: str) -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 3000
    X = rng.normal(size=(n, 5)) * np.array([1.0, 10.0, 100.0, 0.01, 1.0])
    X[:, 4] = rng.integers(0, 300, n)  # integer-valued, like a count
    y = X[:, 0] * 2 + np.sin(X[:, 1]) + X[:, 4] / 100 + rng.normal(scale=0.1, size=n)
    params: dict[str, Any] = {
        "objective": "huber",
        "alpha": 0.6,
        "num_leaves": 31,
        "learning_rate": 0.1,
        "min_data_in_leaf": 5,
        "verbose": -1,
        "num_threads": 1,
        "seed": 1,
    }
    if kind == "nan":
        X[rng.random(n) < 0.1, 0] = np.nan
        X[rng.random(n) < 0.1, 2] = np.nan
    elif kind == "zero":
        X[rng.random(n) < 0.2, 0] = 0.0
        X[rng.random(n) < 0.2, 1] = 0.0
        params["zero_as_missing"] = True
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=60)
    return booster, X


def _hard_rows(booster: Any, X: np.ndarray) -> np.ndarray:
    """Training rows plus every threshold, its neighbours and all-ones doubles as inputs,
    and NaN, zero, tiny values in every column."""
    rows = [X[:500]]
    thresholds: dict[int, list[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            thresholds.setdefault(int(node["split_feature"]), []).append(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    base = np.nan_to_num(X[500:1000], nan=0.5)
    for f, values in thresholds.items():
        for value in values[:40]:
            for probe in (value, np.nextafter(value, -np.inf), np.nextafter(value, np.inf)):
                row = base[len(rows) % len(base)].copy()
                row[f] = probe
                rows.append(row[None, :])
            if value != 0 and np.isfinite(value):
                row = base[len(rows) % len(base)].copy()
                row[f] = _all_ones_low_word(value)
                rows.append(row[None, :])
    special = [np.nan, 0.0, -0.0, 1e-40, -1e-40, 1e-35, 2e-35, 226.0, -226.0]
    for f in range(X.shape[1]):
        for value in special:
            row = base[f].copy()
            row[f] = value
            rows.append(row[None, :])
    out = np.vstack(rows)
    out[:, 4] = np.where(np.arange(len(out)) % 3 == 0, _all_ones_low_word(226.0), out[:, 4])
    return np.ascontiguousarray(out)


@pytest.mark.parametrize("kind", ["plain", "nan", "zero"])
def test_compiled_trees_equal_lightgbm_exactly(kind: str, tmp_path: Path) -> None:
    booster, X = _booster(kind)
    missing_types = {
        node.get("missing_type")
        for tree in booster.dump_model()["tree_info"]
        for node in [tree["tree_structure"]]
        if "missing_type" in node
    }
    want_type = {"plain": "None", "nan": "NaN", "zero": "Zero"}[kind]
    assert want_type in missing_types  # the split kind under test really occurs
    trees = compiled.build(booster, f"test-{kind}", tmp_path)
    rows = _hard_rows(booster, X)
    expected = booster.predict(rows)
    got = trees.predict(rows)
    assert np.array_equal(got, expected), np.max(np.abs(got - expected))
    assert not trees.cached and trees.seconds > 0


@pytest.mark.skipif(not hasattr(os, "eventfd"), reason="eventfd is Linux-only")
def test_the_worker_thread_gives_the_same_numbers_and_signals_when_done(
    tmp_path: Path,
) -> None:
    """``start`` (what the service uses to run a micro-batch's trees off its event loop):
    returns at once, the eventfd's counter goes to 1 when ``out`` holds exactly
    ``predict``'s numbers; a second job while one runs is refused, not mixed in."""
    import select

    booster, X = _booster("nan")
    trees = compiled.build(booster, "worker", tmp_path)
    rows = np.ascontiguousarray(_hard_rows(booster, X))
    big = np.ascontiguousarray(np.tile(rows, (80, 1)))  # long enough to still run below
    fd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        for job in (rows, big):
            out = np.full(job.shape[0], np.nan)
            status = np.full(1, 7, dtype=np.int32)
            assert trees.start(job, out, status, fd)
            if job is big:
                other = np.empty(rows.shape[0])
                refused = trees.start(rows, other, np.zeros(1, dtype=np.int32), fd)
            ready, _, _ = select.select([fd], [], [], 60)
            assert ready, "the worker never signalled"
            assert os.eventfd_read(fd) == 1
            assert status[0] == 0
            assert np.array_equal(out, trees.predict(job))
        assert refused is False
        # No second signal: the refused job never ran.
        assert select.select([fd], [], [], 0.2)[0] == []
        with pytest.raises(ValueError, match="C-contiguous"):
            trees.start(rows[:, :2], np.empty(len(rows)), np.zeros(1, dtype=np.int32), fd)
    finally:
        os.close(fd)


def test_the_cache_is_reused_and_a_doubtful_library_is_rebuilt(tmp_path: Path) -> None:
    booster, X = _booster("plain")
    first = compiled.build(booster, "model-a", tmp_path)
    again = compiled.build(booster, "model-a", tmp_path)
    assert again.cached and again.seconds == 0.0 and again.path == first.path
    assert first.path.stat().st_mode & 0o077 == 0  # private to the user
    assert compiled.is_cached("model-a", tmp_path) and not compiled.is_cached("other", tmp_path)
    # Writable by others: never loaded from the cache, built again (private).
    first.path.chmod(0o666)
    assert not compiled.is_cached("model-a", tmp_path)
    rebuilt = compiled.build(booster, "model-a", tmp_path)
    assert not rebuilt.cached and rebuilt.path.stat().st_mode & 0o077 == 0
    # Damaged: not a library any more; a new process builds it again instead of failing.
    # (This process has the file mapped, and dlopen of a loaded path returns that one.)
    rebuilt.path.unlink()
    rebuilt.path.write_bytes(b"not a shared library")
    rebuilt.path.chmod(0o600)
    booster.save_model(tmp_path / "model.txt")
    script = (
        "import sys, json, lightgbm as lgb\n"
        "from housing_mlops.inference import compiled\n"
        "b = lgb.Booster(model_file=sys.argv[1])\n"
        "t = compiled.build(b, 'model-a', compiled.Path(sys.argv[2]))\n"
        "print(json.dumps({'cached': t.cached, 'path': str(t.path)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.txt"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    fixed = json.loads(done.stdout)
    assert fixed == {"cached": False, "path": str(first.path)}
    assert first.path.read_bytes().startswith(b"\x7fELF")


def test_a_model_it_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.integers(0, 6, 800), rng.normal(size=800)])
    y = X[:, 0] * 3 + X[:, 1]
    data = lgb.Dataset(X, y, categorical_feature=[0])
    booster = lgb.train({"verbose": -1, "num_threads": 1, "min_data_per_group": 5}, data, 10)
    with pytest.raises(compiled.NotCompilable, match="categorical"):
        compiled.build(booster, "categorical", tmp_path)


# ------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def lgbm_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = champion_config(tmp_path_factory)
    candidate = CandidateConfig(
        name="lightgbm",
        estimator="lightgbm",
        params={"n_estimators": 80, "num_leaves": 15, "learning_rate": 0.1},
    )
    register_champion(config, seed=5, candidate=candidate)
    return config


def _score(
    capsys: pytest.CaptureFixture[str], config: Path, src: Path, out: Path, *args: str
) -> dict[str, Any]:
    assert run(["-c", str(config), "predict", str(src), "-o", str(out), "--json", *args]) == 0
    return dict(json.loads(capsys.readouterr().out))


def _split(config: Path) -> Path:
    return Path(load_config(config).paths.processed_dir) / "test.parquet"


def test_predict_with_compiled_trees_writes_the_same_file(
    lgbm_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HOUSING_COMPILE_CACHE", str(tmp_path / "cache"))
    src = _split(lgbm_config)
    plain = _score(capsys, lgbm_config, src, tmp_path / "plain.parquet", "--compile", "never")
    assert plain["trees"]["evaluator"] == "lightgbm"
    built = _score(capsys, lgbm_config, src, tmp_path / "built.parquet", "--compile", "always")
    assert built["trees"]["evaluator"] == "compiled" and not built["trees"]["cached"]
    assert built["trees"]["compile_seconds"] > 0
    a = pq.read_table(tmp_path / "plain.parquet").to_pandas()
    b = pq.read_table(tmp_path / "built.parquet").to_pandas()
    pd.testing.assert_frame_equal(a, b)  # every column, every bit
    settings = load_config(lgbm_config)
    pipeline = registry.load_model(settings, registry.resolve(settings))
    want = pipeline.predict(pd.read_parquet(src)[FEATURES])
    assert np.abs(b["prediction"].to_numpy() - want).max() <= 1e-9
    # auto: a small file, but this model's trees are cached now: used, not built again.
    auto = _score(capsys, lgbm_config, src, tmp_path / "auto.parquet")
    assert auto["trees"] == {**auto["trees"], "evaluator": "compiled", "cached": True}
    # auto with an empty cache: a small file is not worth a compile.
    monkeypatch.setenv("HOUSING_COMPILE_CACHE", str(tmp_path / "empty"))
    small = _score(capsys, lgbm_config, src, tmp_path / "small.parquet")
    assert small["trees"]["evaluator"] == "lightgbm"
    assert "compile_min_rows" in small["trees"]["reason"]
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())


def test_auto_says_a_csvs_row_count_is_an_estimate(
    lgbm_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A CSV's rows are estimated from its size before it is read: the reason auto gives
    says so, instead of a count that disagrees with the `rows in` beside it."""
    monkeypatch.setenv("HOUSING_COMPILE_CACHE", str(tmp_path / "empty"))
    src = _split(lgbm_config)
    csv = tmp_path / "county.csv"
    pd.read_parquet(src)[FEATURES].head(50).to_csv(csv, index=False)
    result = _score(capsys, lgbm_config, csv, tmp_path / "scored.csv")
    assert result["rows_in"] == 50 and result["trees"]["evaluator"] == "lightgbm"
    reason = result["trees"]["reason"]
    assert reason.startswith("auto: about ") and "rows estimated from the CSV's size, " in reason
    # Parquet footers give the exact count: said as a count.
    rows = pq.ParquetFile(src).metadata.num_rows
    exact = _score(capsys, lgbm_config, src, tmp_path / "scored.parquet")
    assert exact["trees"]["reason"].startswith(f"auto: {rows:,} rows, fewer than")


def test_compile_always_where_it_cannot_is_exit_3(
    lgbm_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HOUSING_COMPILE_CACHE", str(tmp_path / "cache"))
    src = _split(lgbm_config)
    out = tmp_path / "out.parquet"
    # The hist_gb version is not a LightGBM model.
    code = run(
        ["-c", str(lgbm_config), "predict", str(src), "-o", str(out)]
        + ["--model-version", "2", "--compile", "always"]
    )
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err
    assert "Error: --compile always: the model is not a LightGBM model" in err
    assert not out.exists()
    # No C compiler on this machine.
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    code = run(["-c", str(lgbm_config), "predict", str(src), "-o", str(out), "--compile", "always"])
    err = capsys.readouterr().err
    assert code == 3 and "Error: --compile always: no C compiler" in err
    # ... which auto just notes, and scores with LightGBM.
    assert run(["-c", str(lgbm_config), "predict", str(src), "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trees"]["evaluator"] == "lightgbm"


def test_a_bad_compile_value_is_a_usage_error(
    lgbm_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _split(lgbm_config)
    code = run(["-c", str(lgbm_config), "predict", str(src), "--compile", "sometimes"])
    err = capsys.readouterr().err
    assert code == 2 and "--compile must be one of auto, always, never" in err


@pytest.mark.slow
def test_spark_executors_use_the_shipped_compiled_trees(
    spark_session: Any,
    lgbm_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The driver builds the trees once and ships the library with the model; every
    # executor's Python worker loads it (and checks it against LightGBM) before scoring.
    monkeypatch.setenv("HOUSING_COMPILE_CACHE", str(tmp_path / "cache"))
    src = _split(lgbm_config)
    local = _score(capsys, lgbm_config, src, tmp_path / "local.parquet", "--compile", "never")
    assert local["trees"]["evaluator"] == "lightgbm"
    spark = _score(
        capsys,
        lgbm_config,
        src,
        tmp_path / "spark.parquet",
        "--engine",
        "spark",
        "--compile",
        "always",
    )
    assert spark["engine"] == "spark" and spark["trees"]["evaluator"] == "compiled"
    a = pq.read_table(tmp_path / "local.parquet").to_pandas()
    b = pq.read_table(tmp_path / "spark.parquet").to_pandas().sort_values("row_id")
    np.testing.assert_array_equal(a["row_id"], b["row_id"])
    assert np.array_equal(a["prediction"].to_numpy(), b["prediction"].to_numpy())

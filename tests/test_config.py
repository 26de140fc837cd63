"""The YAML config: validation errors name the key and the file; env overrides; paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from synthetic import write_config

from housing_mlops.cli import run
from housing_mlops.config import (
    ENV_OVERRIDES,
    STATLIB_SHA256,
    ConfigError,
    FeaturesConfig,
    config_hash,
    load_config,
    settings_from_dict,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MINIMAL = "train:\n  candidates: [{name: ridge, estimator: ridge}]\n"


def config_error(capsys: pytest.CaptureFixture[str], path: Path | str) -> str:
    """Run a command that reads the config; return the single stderr line (exit 3)."""
    capsys.readouterr()
    code = run(["-c", str(path), "featurize"])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    return lines[0]


def test_default_config_loads() -> None:
    settings = load_config(REPO_ROOT / "configs" / "default.yaml")
    assert settings.data.sha256 == STATLIB_SHA256
    assert settings.data.urls == ["https://ndownloader.figshare.com/files/5976036"]
    assert (settings.split.test_size, settings.split.seed) == (0.2, 42)
    assert [c.name for c in settings.train.candidates] == [
        "ridge",
        "random_forest",
        "hist_gb",
        "lightgbm",
    ]


def test_shipped_yaml_states_the_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/default.yaml and the pydantic defaults say the same (defaults live in code)."""
    for name in ENV_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    raw = yaml.safe_load((REPO_ROOT / "configs" / "default.yaml").read_text())
    shipped = load_config(REPO_ROOT / "configs" / "default.yaml").model_dump(mode="json")
    defaults = settings_from_dict({"train": {"candidates": raw["train"]["candidates"]}})
    assert shipped == defaults.model_dump(mode="json")


def test_the_readme_configuration_table_lists_every_key_once() -> None:
    import re

    from housing_mlops.config import Settings

    table = (REPO_ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1]
    table = table.split("\n### ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", table, flags=re.M))
    for section, field in Settings.model_fields.items():
        if section == "source":
            continue
        keys = set(field.annotation.model_fields)  # type: ignore[union-attr]
        named = [k for k in re.findall(r"`(\w+)`", rows[section]) if k in keys]
        assert sorted(keys - set(named)) == [], f"'{section}' keys missing in the README"
        assert sorted({k for k in named if named.count(k) > 1}) == [], f"'{section}': twice"


def test_feature_transformer_defaults_are_the_config_defaults() -> None:
    from housing_mlops.features import SpatialFeatures, build_preprocessor

    cfg = FeaturesConfig()
    for transformer in (SpatialFeatures(), build_preprocessor(None)):
        params = transformer.get_params()
        assert list(params["rotations_deg"]) == cfg.rotations_deg
        assert list(params["knn_neighbors"]) == cfg.knn_neighbors
        assert params["knn_folds"] == cfg.knn_folds
        assert params["city_distances"] == cfg.city_distances
        assert params["knn_distances"] == cfg.knn_distances


def test_unknown_key_names_key_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  urlz: [http://example.invalid/a.tgz]\n" + MINIMAL)
    assert config_error(capsys, path) == f"Error: invalid config {path}: unknown key 'data.urlz'"


def test_unknown_section_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("serving:\n  port: 1\n" + MINIMAL)
    assert config_error(capsys, path) == f"Error: invalid config {path}: unknown key 'serving'"


def test_wrong_type_names_key_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  retries: many\n" + MINIMAL)
    assert config_error(capsys, path) == (
        f"Error: invalid config {path}: 'data.retries': Input should be a valid integer, "
        "unable to parse string as an integer"
    )


def test_bad_checksum_and_estimator_are_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sha256: abc\ntrain:\n  candidates: [{name: x, estimator: xgboost}]\n")
    line = config_error(capsys, path)
    assert line.startswith(f"Error: invalid config {path}: 'data.sha256': ")
    assert "must be a 64-character hex sha256" in line
    assert "'train.candidates.0.estimator': Input should be 'ridge'" in line


def test_missing_required_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("split:\n  seed: 1\n")
    assert config_error(capsys, path) == f"Error: invalid config {path}: missing key 'train'"


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert config_error(capsys, path) == (
        f"Error: config file not found: {path} (pass --config PATH or run from the project root)"
    )


def test_a_folder_is_named_as_a_folder_not_as_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `housing train -c configs`: the folder exists, so "not found" sent users looking for it.
    path = tmp_path / "configs"
    path.mkdir()
    assert config_error(capsys, path) == (
        f"Error: config {path} is a directory, not a YAML file: pass the file with "
        f"--config PATH (e.g. {path}/default.yaml)"
    )


def test_an_empty_config_option_is_named_not_called_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `housing -c "$CONFIG" drift` with $CONFIG unset: the message said "config . is a
    # directory ... (e.g. default.yaml)", a file that is nowhere.
    monkeypatch.chdir(tmp_path)
    assert config_error(capsys, "") == (
        "Error: config . is the current folder (an empty --config?), not a YAML file: pass "
        "the file with --config PATH (e.g. configs/default.yaml)"
    )


@pytest.mark.parametrize(
    ("section", "values", "reason"),
    [
        (
            "evaluate",
            {"plausible_min": 8.0},
            "'evaluate': Value error, plausible_min (8.0) must be below plausible_max (7.0)",
        ),
        (
            "drift",
            {"psi_warn": 0.5},
            "'drift': Value error, psi_warn (0.5) must be at most psi_drift (0.2)",
        ),
        (
            "drift",
            {"wasserstein_warn": 0.3, "wasserstein_drift": 0.2},
            "'drift': Value error, wasserstein_warn (0.3) must be at most wasserstein_drift (0.2)",
        ),
        ("promote", {"min_r2": 1.5}, "'promote.min_r2': Input should be less than or equal to 1"),
    ],
)
def test_settings_that_contradict_each_other_are_config_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    section: str,
    values: dict[str, float],
    reason: str,
) -> None:
    """A reversed plausible range failed every prediction and blamed the model; a warn
    threshold above the drift one never showed a warn; min_r2 above 1 refused every model.
    Each loaded without a word."""
    path = write_config(tmp_path, {section: values})
    assert config_error(capsys, path) == f"Error: invalid config {path}: {reason}"


def test_bad_yaml_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  urls: [a\n  b: c\n")
    assert config_error(capsys, path) == f"Error: config {path} is not valid YAML at line 3"


@pytest.mark.parametrize(
    "blob",
    [b"\xff\xfe\x00garbage", b"\x1f\x8b\x08\x00" + bytes(range(256))],
    ids=["not-utf8", "gzip-binary"],
)
def test_binary_config_is_a_config_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], blob: bytes
) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(blob)
    line = config_error(capsys, path)
    assert line.startswith(f"Error: config {path} is not UTF-8 text (undecodable byte at offset ")
    assert line.endswith("pass the YAML config with --config PATH")


def test_top_level_must_be_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    assert config_error(capsys, path) == (
        f"Error: config {path} must be a YAML mapping at the top level"
    )


def test_env_overrides_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path)
    assert load_config(path).mlflow.tracking_uri.startswith("sqlite:///")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("HOUSING_SERVE_PORT", "9123")
    settings = load_config(path)
    assert settings.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert settings.serve.port == 9123


@pytest.mark.parametrize(
    ("env", "value", "key", "message"),
    [
        ("HOUSING_SERVE_PORT", "eighty", "serve.port", "Input should be a valid integer"),
        ("HOUSING_SERVE_WORKERS", "0", "serve.workers", "greater than or equal to 1"),
        ("HOUSING_SERVE_CHALLENGER_MODE", "bogus", "serve.challenger_mode", "'off', 'shadow'"),
        ("HOUSING_SERVE_COMPILED_TREES", "sometimes", "serve.compiled_trees", "'auto', 'always'"),
        ("HOUSING_REQUEST_LOG", "mysql://app:hunter2@db/r", "serve.request_log", "not mysql://"),
    ],
)
def test_a_bad_env_override_is_exit_3_naming_the_variable_not_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str,
    value: str,
    key: str,
    message: str,
) -> None:
    path = write_config(tmp_path)  # a valid file: the value came from the environment
    monkeypatch.setenv(env, value)
    line = config_error(capsys, path)
    assert line.startswith(
        f"Error: invalid environment variable {env} (overrides '{key}' of {path}): "
    ), line
    assert message in line and "invalid config" not in line
    assert "hunter2" not in line  # the value is not repeated: a URL may hold a password


def test_bad_keys_in_the_file_and_the_environment_are_named_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("serve:\n  workers: none\n" + MINIMAL)
    monkeypatch.setenv("HOUSING_SERVE_PORT", "eighty")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"invalid config {path}: 'serve.workers': Input should be a valid integer, unable to "
        "parse string as an integer; invalid environment variable HOUSING_SERVE_PORT "
        f"(overrides 'serve.port' of {path}): Input should be a valid integer, unable to parse "
        "string as an integer"
    )


def test_relative_paths_resolve_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    path = conf_dir / "c.yaml"
    path.write_text("paths:\n  raw_dir: data/raw\nserve:\n  request_log: logs/r.db\n" + MINIMAL)
    monkeypatch.chdir(work)
    settings = load_config(path)
    assert settings.paths.raw_dir == work.resolve() / "data" / "raw"
    assert settings.serve.request_log == work.resolve() / "logs" / "r.db"
    # Defaults resolve too (not against the config file's folder).
    assert settings.paths.processed_dir == work.resolve() / "data" / "processed"


def test_a_postgresql_url_is_kept_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql://app:pw@db:5432/requests"
    path = tmp_path / "c.yaml"
    path.write_text(f"serve:\n  request_log: {url}\n" + MINIMAL)
    assert load_config(path).serve.request_log == url  # not Path-collapsed, not resolved
    monkeypatch.setenv("HOUSING_REQUEST_LOG", "postgres://app:pw@other/db")
    monkeypatch.setenv("HOUSING_INSTANCE", "api-2")
    settings = load_config(path)
    assert settings.serve.request_log == "postgres://app:pw@other/db"
    assert settings.serve.instance == "api-2"


def test_a_url_of_another_database_is_a_config_error_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("serve:\n  request_log: mysql://app:hunter2@db/requests\n" + MINIMAL)
    message = config_error(capsys, path)
    assert "'serve.request_log'" in message and "not mysql://" in message
    assert "hunter2" not in message


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path))
    with pytest.raises(ValueError, match="frozen"):
        settings.split.seed = 7  # type: ignore[misc]


def test_config_hash_tracks_settings(tmp_path: Path) -> None:
    raw = yaml.safe_load(write_config(tmp_path).read_text())
    base = config_hash(settings_from_dict(raw))
    assert config_hash(settings_from_dict(raw)) == base
    raw["split"] = {"seed": 7}
    assert config_hash(settings_from_dict(raw)) != base


def test_a_config_path_the_system_cannot_stat_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """os.stat errors other than "no such file" (a folder the user may not enter, a name
    too long) escape Path.is_file: they must be exit 3 and one line, not a traceback. A
    name too long stands in for the permission case, which root (these tests) never hits."""
    path = tmp_path / ("x" * 300) / "c.yaml"
    assert config_error(capsys, path) == f"Error: cannot read config {path}: File name too long"


@pytest.mark.parametrize("value", ["bogus", "", "99999999999d"])
def test_a_drift_default_since_that_is_not_a_time_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    from housing_mlops.timestamps import ACCEPTED_TIME_FORMS

    path = write_config(tmp_path, {"drift": {"default_since": value}})
    # `housing drift` without --since: the error is the config's key, not an option.
    assert run(["-c", str(path), "drift"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(
        f"Error: invalid config {path}: 'drift.default_since': Value error, {value!r} is "
    ), err
    assert err.endswith(f": use {ACCEPTED_TIME_FORMS}\n") and err.count("\n") == 1
    assert "--since" not in err


def test_a_drift_default_since_that_is_a_time_loads(tmp_path: Path) -> None:
    for value in ("12h", "2w", "2026-01-31T12:00:00Z"):
        path = write_config(tmp_path, {"drift": {"default_since": value}})
        assert load_config(path).drift.default_since == value


@pytest.mark.parametrize(
    ("section", "key", "value", "reason"),
    [
        ("split", "seed", -1, "Input should be greater than or equal to 0"),
        ("train", "seed", 2**32, "Input should be less than or equal to 4294967295"),
        ("mlflow", "experiment_name", "", "String should have at least 1 character"),
        ("mlflow", "registered_model_name", "", "String should have at least 1 character"),
    ],
)
def test_values_that_failed_mid_run_are_config_errors_at_load(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    section: str,
    key: str,
    value: object,
    reason: str,
) -> None:
    """A negative seed stopped `featurize` with scikit-learn's 'unexpected
    InvalidParameterError' (exit 1), and an empty registered model name stopped `train`
    only after every fit (exit 5): each is the config's key, exit 3, before any work."""
    path = write_config(tmp_path, {section: {key: value}})
    assert (
        config_error(capsys, path) == f"Error: invalid config {path}: '{section}.{key}': {reason}"
    )


def test_yaml_values_of_the_wrong_kind_are_named_not_coerced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path key given a list, a number or nothing, and a number key given yes/no, are
    exit 3 naming each key. Before, `raw_dir: [1]` became a folder named "[1]",
    `request_log: 5` a file named "5", `request_log: ""` the current folder and `port: yes`
    port 1: nothing said the config was wrong."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "paths:\n  raw_dir: [1]\n  reports_dir: {a: 1}\n"
        "serve:\n  port: yes\n  request_log: 5\n  spool_dir: ''\n"
        "data:\n  timeout_s: no\n" + MINIMAL
    )
    assert config_error(capsys, path) == (
        f"Error: invalid config {path}: 'paths.raw_dir': Value error, must be a path (text), "
        "not a list; 'paths.reports_dir': Value error, must be a path (text), not a mapping; "
        "'data.timeout_s': Value error, must be a number, not true/false; 'serve.port': Value "
        "error, must be a number, not true/false; 'serve.request_log': Value error, must be a "
        "path (text), not a number; 'serve.spool_dir': Value error, must be a path, not empty"
    )
    assert not (tmp_path / "[1]").exists()
    path.write_text("serve:\n  request_log: ''\n" + MINIMAL)
    assert config_error(capsys, path) == (
        f"Error: invalid config {path}: 'serve.request_log': Value error, must be a path, not empty"
    )


def test_an_empty_serve_host_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `host: ""` made `housing serve` listen on every interface, not on this machine only,
    # and announce "Serving … at http://:8000", a URL no client can use.
    path = write_config(tmp_path, {"serve": {"host": ""}})
    assert config_error(capsys, path) == (
        f"Error: invalid config {path}: 'serve.host': String should have at least 1 character"
    )

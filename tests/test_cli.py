"""The `housing` command: exit codes, the exact `Error:` lines, help, version, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import GOOD, sha256
from synthetic import write_config

from housing_mlops import __version__
from housing_mlops.cli import run

REPO_ROOT = Path(__file__).resolve().parent.parent
HOUSING = Path(sys.executable).parent / "housing"
COMMANDS = [
    "fetch",
    "featurize",
    "train",
    "evaluate",
    "promote",
    "serve",
    "predict",
    "drift",
    "report",
]


@pytest.fixture(autouse=True)
def _no_archive_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI sets $HOUSING_DATA_ARCHIVE for the real-data tests; here it would win over the
    URLs under test (it takes precedence over data.urls by design)."""
    monkeypatch.delenv("HOUSING_DATA_ARCHIVE", raising=False)


@pytest.fixture
def offline_config(tmp_path: Path) -> tuple[Path, Path]:
    """A config pinned to the small test archive, and a local copy of that archive."""
    archive = tmp_path / "mirror.tgz"
    archive.write_bytes(GOOD)
    cfg = write_config(
        tmp_path, {"data": {"urls": ["http://127.0.0.1:9/unused"], "sha256": sha256(GOOD)}}
    )
    return cfg, archive


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f" {command} " in out, command
    assert "--config" in out and "--version" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out == f"housing {__version__}\n"


def test_bad_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fetch", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "No such option: --bogus" in err
    assert "Traceback" not in err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fetchh"]) == 2
    assert "No such command 'fetchh'" in capsys.readouterr().err


def test_missing_config_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert run(["-c", str(missing), "fetch"]) == 3
    assert capsys.readouterr().err == (
        f"Error: config file not found: {missing} "
        "(pass --config PATH or run from the project root)\n"
    )


def test_featurize_before_fetch_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert run(["-c", str(cfg), "featurize"]) == 4
    parquet = tmp_path / "data" / "raw" / "california_housing.parquet"
    assert capsys.readouterr().err == (
        f"Error: no raw data at {parquet}: run `housing fetch` first\n"
    )


def test_fetch_then_featurize_json(
    offline_config: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, archive = offline_config
    assert run(["-c", str(cfg), "fetch", "--from", str(archive), "--json"]) == 0
    fetched = json.loads(capsys.readouterr().out)
    assert fetched["cached"] is False and fetched["rows"] == 7

    assert run(["-c", str(cfg), "fetch", "--json"]) == 0  # cached: no network needed
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] is True
    assert again["content_hash"] == fetched["content_hash"]

    assert run(["-c", str(cfg), "featurize", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data_version"] == fetched["content_hash"]
    assert result["train_rows"] + result["test_rows"] == 7
    assert Path(result["train_path"]).is_file() and Path(result["test_path"]).is_file()


def test_fetch_table_output(
    offline_config: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, archive = offline_config
    assert run(["-c", str(cfg), "fetch", "--from", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "housing fetch" in out
    assert "rows" in out and "7" in out
    assert "cached" in out
    assert run(["-c", str(cfg), "featurize"]) == 0
    out = capsys.readouterr().out
    assert "train rows" in out and "test rows" in out


# ------------------------------------------------------------ the installed command
def _housing(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # As from a shell: bash sets COLUMNS without exporting it (pytest's children see 80).
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [str(HOUSING), *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.skipif(not HOUSING.exists(), reason="the `housing` script is not installed")
def test_installed_help_is_fast_and_lists_commands(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _housing("--help", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout
    # Generous bound for a loaded 2-core CI box; a stray mlflow/sklearn import costs seconds.
    assert elapsed < 5, f"`housing --help` took {elapsed:.2f}s"


@pytest.mark.skipif(not HOUSING.exists(), reason="the `housing` script is not installed")
def test_installed_featurize_before_fetch(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    proc = _housing("-c", str(cfg), "featurize", cwd=tmp_path)
    assert proc.returncode == 4
    parquet = tmp_path / "data" / "raw" / "california_housing.parquet"
    assert proc.stderr == f"Error: no raw data at {parquet}: run `housing fetch` first\n"
    assert proc.stdout == ""


@pytest.mark.skipif(not HOUSING.exists(), reason="the `housing` script is not installed")
def test_installed_fetch_from_missing_path(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    proc = _housing("-c", str(cfg), "fetch", "--from", "nowhere.tgz", cwd=tmp_path)
    assert proc.returncode == 4
    assert proc.stderr == f"Error: --from path not found: {tmp_path.resolve() / 'nowhere.tgz'}\n"


@pytest.mark.parametrize(
    ("command", "codes"),
    [
        # README "Drift, traffic and the report": exit 0, 3, 4, 6, 7 (and 2 for --since).
        ("drift", ["0 ", "2 a malformed", "3 a PostgreSQL", "4 a request log", "6 ", "7 "]),
        # README "Ground truth": 3 no log / cannot be written; 4 a bad file or a log that
        # is not a SQLite database (the exit-code table).
        ("feedback", ["0 applied", "3 no request log", "4 a bad file", "not a SQLite"]),
    ],
)
def test_help_lists_the_exit_codes_the_readme_gives_the_command(
    command: str, codes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([command, "-h"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    missing = [code for code in codes if code not in text]
    assert not missing, text


@pytest.mark.skipif(not HOUSING.exists(), reason="the `housing` script is not installed")
@pytest.mark.parametrize("as_json", [["--json"], []], ids=["json", "rich"])
def test_installed_output_to_a_reader_that_left_is_exit_141_not_1(
    tmp_path: Path, as_json: list[str]
) -> None:
    # `housing evaluate --live --json | head`: Typer answers the broken pipe inside the
    # command with a silent exit 1 ("unexpected error" in the exit-code table). Without
    # --json the output goes through Rich, whose own answer was the same silent exit 1.
    cfg = write_config(tmp_path)
    proc = subprocess.Popen(
        [str(HOUSING), "-c", str(cfg), "evaluate", "--live", *as_json],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader leaves before the command writes its result
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Error" not in err, err


# ------------------------------------------- common options after the subcommand
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_config_and_verbose_after_its_name(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    assert run([command, "--config", str(cfg), "--help"]) == 0
    out = capsys.readouterr().out
    assert f"Usage: housing {command}" in out
    assert "-c, --config PATH" in out and "-v, --verbose" in out
    assert "<bool>" not in out  # flags take no value, so show none


def test_config_after_the_subcommand_is_the_one_used(
    offline_config: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, archive = offline_config
    assert run(["fetch", "--from", str(archive), "--config", str(cfg), "--json"]) == 0
    fetched = json.loads(capsys.readouterr().out)
    assert Path(fetched["parquet"]).is_relative_to(cfg.parent)
    # `-c` after the name wins over the one before it, as a user fixing a call expects.
    args = ["-c", str(cfg.parent / "missing.yaml"), "featurize", "-c", str(cfg), "--json"]
    assert run(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train_rows"] + result["test_rows"] == 7
    assert Path(result["train_path"]).is_relative_to(cfg.parent)


def test_missing_config_after_the_subcommand_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert run(["featurize", "--config", str(missing)]) == 3
    assert capsys.readouterr().err.startswith(f"Error: config file not found: {missing}")


# ---------------------------------------------------- one error format, exit 2
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus"], "No such command 'bogus'"),
        (["fetch", "--bogus"], "No such option: --bogus"),
        (["drift", "--since"], "Option '--since' requires an argument"),
        (["promote", "--version", "abc"], "Invalid value for '--version'"),
        (["serve", "--port", "abc"], "Invalid value for '--port'"),
        (["serve", "--port", "0"], "Invalid value for '--port'"),
        (["serve", "--port", "-1"], "Invalid value for '--port'"),
        (["serve", "--port", "70000"], "Invalid value for '--port'"),
        (["serve", "--workers", "0"], "Invalid value for '--workers'"),
        (["evaluate", "--version", "0"], "Invalid value for '--version'"),
        # A missing value, and the values only the library can judge: the same hint.
        (["serve", "--port"], "Option '--port' requires an argument"),
        (["fetch", "--from"], "Option '--from' requires an argument"),
        (["drift", "--since", "yesterday"], "--since 'yesterday' is not a time"),
        (["promote", "--to", "bogus"], "--to takes champion or challenger, not 'bogus'"),
        (["serve", "--challenger-mode", "bogus"], "--challenger-mode must be off, shadow or"),
    ],
)
def test_usage_errors_are_one_error_line_a_help_hint_and_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A config with no trained model: were the value accepted, serve would exit 5 instead.
    cfg = write_config(tmp_path)
    assert run(["-c", str(cfg), *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 2, captured.err
    assert lines[0].startswith("Error: ") and message in lines[0], captured.err
    command = "housing" if args == ["bogus"] else f"housing {args[0]}"
    assert lines[1] == f"Try '{command} -h' for help."
    assert "╭" not in captured.err and "Usage:" not in captured.err
    assert captured.out == ""


# ------------------------------------------------ the README's tables match the CLI
COMMON_OPTIONS = {"--config", "-c", "--verbose", "-v", "--json", "--help", "-h"}


def _readme_section(title: str) -> str:
    return (REPO_ROOT / "README.md").read_text().split(f"\n{title}\n", 1)[1].split("\n#", 1)[0]


def _command_options() -> dict[str, list[list[str]]]:
    """Each subcommand's own options (each as its names), from the command tree."""
    import typer

    from housing_mlops.cli import app

    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    return {
        name: [p.opts for p in cmd.params if p.param_type_name == "option"]
        for name, cmd in commands.items()
    }


def test_the_commands_table_shows_every_option_of_every_command() -> None:
    import re

    rows = re.findall(r"^\| `housing (\w+)([^`]*)` \|", _readme_section("## Commands"), re.M)
    shown: dict[str, str] = {}
    for name, usage in rows:
        shown[name] = shown.get(name, "") + usage
    missing = {
        f"{name} {names[0]}"
        for name, options in _command_options().items()
        for names in options
        if not COMMON_OPTIONS & set(names)
        and not any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", shown[name]) for n in names)
    }
    assert missing == set(), "add them to the README's Commands table"


def test_the_environment_table_names_every_command_with_request_log() -> None:
    row = next(
        line
        for line in _readme_section("### Environment variables").splitlines()
        if line.startswith("| `HOUSING_REQUEST_LOG` |")
    )
    with_option = {
        name
        for name, options in _command_options().items()
        if any("--request-log" in names for names in options)
    }
    assert {"serve", "drift", "report", "evaluate", "feedback"} <= with_option
    assert {name for name in with_option if f"`{name}" not in row} == set(), row


def test_bare_housing_prints_help_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([]) == 0
    captured = capsys.readouterr()
    assert "Usage: housing" in captured.out and "Error" not in captured.err


def test_help_shows_defaults_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # help text wraps at the terminal width
    assert "--host HOST" in out and "127.0.0.1" in out
    assert "--port PORT" in out and "8000" in out
    assert run(["drift", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--since WHEN" in out and "7d" in out
    assert run(["--help"]) == 0
    assert "--install-completion" in capsys.readouterr().out


# -------------------------------------------------- output on pipes and in CI logs
@pytest.mark.skipif(not HOUSING.exists(), reason="the `housing` script is not installed")
def test_piped_output_keeps_table_cells_whole_and_shows_progress_lines(
    offline_config: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg, archive = offline_config
    proc = _housing("fetch", "--from", str(archive), "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # 64 hex characters on one line: a pipe is not an 80-column terminal.
    assert sha256(GOOD) in proc.stdout
    assert str(tmp_path / "data" / "raw" / "manifest.json") in proc.stdout
    # stderr is a pipe here: a progress line per stage instead of a (blank) bar.
    assert "fetch: " in proc.stderr and "done in" in proc.stderr


def test_long_commands_print_a_line_per_stage_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import write_processed

    from housing_mlops.config import load_config

    cfg = write_config(tmp_path)
    write_processed(load_config(cfg), n=400)
    # capsys: stderr is not a terminal, as in CI logs and pipes.
    assert run(["train", "-c", str(cfg), "--model", "ridge"]) == 0
    err = capsys.readouterr().err
    assert "train: ridge: cross-validation 1/3" in err and "train: done in" in err
    assert run(["evaluate", "-c", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "evaluate: " in err and "evaluated" in err and "evaluate: done in" in err
    assert run(["report", "-c", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert err.count("report: ") >= 3 and "report: done in" in err

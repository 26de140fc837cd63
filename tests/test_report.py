"""`housing report`: empty, partial and full state; self-contained HTML and a Markdown twin.

The full state is real: the shared synthetic MLflow store of test_registry (copied),
evaluated and promoted with the train helper's functions, a request log written as the
service writes it, and two stored drift runs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import copy_store, damaged_copy, trained_store
from synthetic import write_config

from housing_mlops import columns
from housing_mlops.cli import run
from housing_mlops.config import load_config
from housing_mlops.drift.check import check_drift
from housing_mlops.report import build_report

FEATURES = list(columns.FEATURES)


def assert_self_contained(html: str) -> None:
    assert not re.search(r"https?://", html), "the report must not reference the network"
    assert "<script" not in html and "<link" not in html and "@import" not in html
    for src in re.findall(r'<img[^>]*src="([^"]+)"', html):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_state_gives_sections_that_say_what_to_run(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    code = run(["--config", str(config), "report", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["html"] == str(tmp_path / "reports" / "report.html")
    assert set(result["sections"].values()) == {"empty"}
    html = Path(result["html"]).read_text()
    markdown = Path(result["markdown"]).read_text()
    for text in (html, markdown):
        assert "No model is registered yet: run `housing train`" in text.replace(
            "<code>", "`"
        ).replace("</code>", "`")
        assert "no traffic yet" in text
        assert "No request log at" in text
    assert_self_contained(html)
    assert "<img" not in html
    # Reading never creates the request log or an MLflow store.
    assert not (tmp_path / "data" / "requests.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_an_unreachable_registry_is_named_in_the_evaluation_too(tmp_path: Path, capsys) -> None:
    """With MLflow down the evaluation section said "No champion to evaluate yet: run
    `housing promote`", sending users to promote again a champion the registry held."""
    from helpers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, {"mlflow": {"tracking_uri": uri}})
    code = run(["--config", str(config), "report", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["sections"]["evaluation"] == result["sections"]["champion"] == "empty"
    markdown = Path(result["markdown"]).read_text()
    evaluation = markdown.split("## Evaluation of the champion (test split)")[1].split("\n## ")[0]
    assert f"cannot reach the MLflow tracking server at {uri}" in evaluation
    assert "housing promote" not in evaluation
    assert "evaluating" not in captured.err  # no stage that cannot run is announced


@pytest.mark.parametrize("kind", ["text", "directory"])
def test_a_log_that_is_not_a_database_is_a_data_error_exit_4(
    tmp_path: Path, capsys, kind: str
) -> None:
    config = write_config(tmp_path)
    log = tmp_path / "data" / "requests.db"
    log.parent.mkdir(parents=True)
    if kind == "text":
        log.write_text("not a database\n")
    else:
        log.mkdir()
    code = run(["--config", str(config), "report"])
    captured = capsys.readouterr()
    assert code == 4, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: the request log {log} "), lines
    assert "not a SQLite database" in lines[0]
    assert not (tmp_path / "reports").exists()  # nothing written


def test_an_empty_out_is_a_usage_error_not_the_current_folder(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `housing report --out "$DIR"` with DIR unset: a Path option read "" as ".", and the
    # report, its Markdown and report_files/ landed in the current folder, exit 0.
    config = write_config(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = run(["--config", str(config), "report", "--out", ""])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.splitlines() == [
        "Error: --out is empty: give the folder to write the report to",
        "Try 'housing report -h' for help.",
    ]
    assert list(work.iterdir()) == []


def unwritable_out(tmp_path: Path, kind: str) -> Path:
    """An --out value that cannot hold the report (tests run as root: chmod is no bar)."""
    if kind == "existing file":
        (tmp_path / "taken").write_text("keep me\n")
        return tmp_path / "taken"
    if kind == "under a file":
        (tmp_path / "taken").write_text("keep me\n")
        return tmp_path / "taken" / "reports"
    folder = Path("/sys/kernel")  # a folder that not even root may create files in
    if not folder.is_dir() or os.access(folder, os.W_OK) and _can_create(folder):
        pytest.skip("no folder here that refuses new files")
    return folder


def _can_create(folder: Path) -> bool:
    try:
        (folder / ".housing-probe").touch()
    except OSError:
        return False
    (folder / ".housing-probe").unlink()
    return True


@pytest.mark.parametrize("kind", ["existing file", "under a file", "read-only folder"])
def test_out_that_is_not_a_writable_folder_is_a_usage_error_exit_2(
    tmp_path: Path, capsys, kind: str
) -> None:
    config = write_config(tmp_path)
    out = unwritable_out(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = run(["--config", str(config), "report", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"Error: --out {out} "), lines
    assert "choose a folder you can write to" in lines[0]
    assert lines[1] == "Try 'housing report -h' for help."
    assert captured.out == ""
    # No partial output: nothing new beside the config, the file untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if kind != "read-only folder":
        assert (tmp_path / "taken").read_text() == "keep me\n"
    else:
        assert not [p for p in out.iterdir() if p.name.startswith((".report", "report"))]


def test_unwritable_reports_dir_from_the_config_is_a_config_error_exit_3(
    tmp_path: Path, capsys
) -> None:
    (tmp_path / "taken").write_text("keep me\n")
    config = write_config(tmp_path, {"paths": {"reports_dir": str(tmp_path / "taken")}})
    code = run(["--config", str(config), "report"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith(f"Error: paths.reports_dir {tmp_path / 'taken'} is a file")


@pytest.mark.parametrize("given", [True, False])
def test_a_failed_write_keeps_the_previous_report_and_leaves_no_staging(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, given: bool
) -> None:
    import errno

    from housing_mlops.report import sections
    from housing_mlops.report.page import Section

    config = write_config(tmp_path)
    out = tmp_path / "reports"
    args = ["--config", str(config), "report", *(["--out", str(out)] if given else [])]
    # A report with a plot in it, written once.
    monkeypatch.setattr(
        sections,
        "serving",
        lambda settings: Section("serving", "Serving").image(
            "requests.png", b"\x89PNG first", "requests"
        ),
    )
    assert run(args) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("report_files/requests.png") in before
    capsys.readouterr()
    # The second run cannot write its PNG (a full disk).
    real_write = Path.write_bytes

    def full_disk(self: Path, data: Any) -> int:
        if self.suffix == ".png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    assert run(args) == (2 if given else 3)
    err = capsys.readouterr().err
    name = "--out" if given else "paths.reports_dir"
    # A bad --out is a usage error (exit 2): the help hint follows, as for every other.
    hint = ["Try 'housing report -h' for help."] if given else []
    assert [line for line in err.splitlines() if not line.startswith("report: ")] == [
        f"Error: cannot write the report to {name} {out} (No space left on device): nothing "
        "was replaced; free space or choose a folder you can write to",
        *hint,
    ]
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the previous report whole, no staging folder beside it
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_latency_percentiles_count_each_request_once_not_each_row(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    write_request_log: Any,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """One 1,000-row batch (500 ms) among 99 single requests (1..99 ms); the same numbers
    from a PostgreSQL log (``--request-log URL``), whose password appears nowhere."""
    import numpy as np

    config = write_config(tmp_path)
    settings = load_config(config)
    log: Path | str = settings.serve.request_log
    extra: list[str] = []
    secret = "no password"
    if backend == "postgresql":
        server = request.getfixturevalue("postgres")
        log, secret = server.create_database(), server.password
        extra = ["--request-log", str(log)]
    house = {c: 1.0 for c in FEATURES}
    now = time.time()
    batch = [
        {
            "ts": now,
            "request_id": "batch",
            "row_index": i,
            "model_name": "m",
            "model_version": "1",
            **house,
            "prediction": 2.0,
            "latency_ms": 500.0,
            "status": 200,
            "instance": "api-1",
        }
        for i in range(1000)
    ]
    singles = [
        {
            "ts": now + ms,
            "request_id": f"one-{ms}",
            "row_index": 0,
            "model_name": "m",
            "model_version": "1",
            **house,
            "prediction": 2.0,
            "latency_ms": float(ms),
            "status": 200,
            "instance": f"api-{1 + ms % 2}",
        }
        for ms in range(1, 100)
    ]
    write_request_log(log, batch + singles)
    code = run(["--config", str(config), "report", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    markdown = Path(result["markdown"]).read_text()
    html = Path(result["html"]).read_text()
    assert secret not in captured.out + captured.err + markdown + html
    per_request = np.percentile([*range(1, 100), 500.0], [50, 95, 99])  # 50.5, 95.05, 103.01
    for label, value in zip(("p50", "p95", "p99"), per_request, strict=True):
        assert f"| latency {label} (ms) | {value:.4g} |" in markdown, markdown
    assert "| logged rows | 1099 |" in markdown and "| requests | 100 |" in markdown
    assert "| rows by replica | api-1: 1049, api-2: 50 |" in markdown, markdown
    assert "Latency is per request" in markdown
    assert "a batch of N rows counts once" in markdown
    assert "largest batch here: 1000 rows" in markdown


def test_progress_names_each_stage_in_order_before_it_runs(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path))
    seen: list[tuple[str, bool]] = []
    out = tmp_path / "out"
    result = build_report(
        settings, out, progress=lambda text: seen.append((text, (out / "report.html").exists()))
    )
    assert [text.split(" ")[0] for text, _ in seen] == [
        "reading",
        "evaluating",
        "reading",
        "reading",
        "reading",
        "writing",
    ]
    assert "MLflow" in seen[0][0] and "drift" in seen[2][0] and "serving" in seen[3][0]
    assert "champion vs challenger" in seen[4][0]
    assert seen[-1][0] == f"writing report.html, report.md and report_files/ to {out}"
    assert not any(written for _, written in seen)  # announced before, not after
    assert Path(result["html"]).is_file()


def test_report_over_an_unreachable_postgresql_log_is_exit_3_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres: Any
) -> None:
    config = write_config(tmp_path)
    url = postgres.url().replace(postgres.password, "Wr0ng-pw")
    code = run(["--config", str(config), "report", "--request-log", url])
    captured = capsys.readouterr()
    assert code == 3 and captured.out == ""
    assert captured.err.startswith("Error: cannot connect to the request log postgresql://")
    assert len(captured.err.splitlines()) == 1 and "Wr0ng-pw" not in captured.err
    assert not (tmp_path / "reports").exists()  # checked before anything is written


@pytest.fixture(scope="module")
def full_state(tmp_path_factory: pytest.TempPathFactory, write_request_log: Any) -> dict[str, Any]:
    from housing_mlops import featurize, registry
    from housing_mlops.evaluate import evaluate
    from housing_mlops.promote import promote

    base, _ = trained_store(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("report")
    settings = copy_store(base, tmp)
    settings = load_config(
        write_config(
            tmp,
            {
                "paths": settings.paths.model_dump(mode="json"),
                "mlflow": settings.mlflow.model_dump(mode="json"),
                "promote": settings.promote.model_dump(mode="json"),
                "serve": {"request_log": str(tmp / "requests.db")},
                "drift": {"min_rows": 50},
            },
        )
    )
    evaluate(settings, all_versions=True)
    promote(settings)
    champion = registry.resolve(settings)
    model = registry.load_model(settings, champion)
    x_test, _ = featurize.load_split(settings, "test")
    shifted = x_test.copy()
    shifted["MedInc"] *= 1.3
    now = time.time()
    for day, frame in ((2, x_test), (1, shifted)):
        preds = model.predict(frame)
        write_request_log(
            settings.serve.request_log,
            [
                {
                    "ts": now - day * 86400 + i,
                    "request_id": f"d{day}-{i}",
                    "row_index": 0,
                    "model_name": champion.name,
                    "model_version": champion.version,
                    **{c: float(frame[c].iloc[i]) for c in FEATURES},
                    "prediction": float(preds[i]),
                    "latency_ms": 1.0 + (i % 10),
                    "status": 200,
                }
                for i in range(len(frame))
            ]
            + [
                {
                    "ts": now - day * 86400 + 500,
                    "request_id": f"bad{day}",
                    "row_index": 0,
                    "latency_ms": 0.5,
                    "status": 422,
                    "error": "MedInc: must be > 0",
                }
            ],
        )
    day_before = datetime.fromtimestamp(now - 2 * 86400 - 10, tz=UTC).isoformat()
    day_after = datetime.fromtimestamp(now - 86400 - 10, tz=UTC).isoformat()
    check_drift(settings, since=day_before, until=day_after)
    check_drift(settings, since="36h")
    return {"settings": settings, "champion": champion, "tmp": tmp, "test_rows": len(x_test)}


@pytest.fixture(scope="module")
def full_report(full_state, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The report of the full state, written through the CLI (`housing report --out --json`)."""
    out = tmp_path_factory.mktemp("full-report") / "out"
    config = full_state["tmp"] / "config.yaml"
    captured = subprocess.run(
        [
            str(Path(sys.executable).parent / "housing"),
            "--config",
            str(config),
            "report",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert captured.returncode == 0, captured.stderr
    return {**json.loads(captured.stdout), "out": out}


def test_full_report_has_every_section_with_embedded_images(full_state, full_report) -> None:
    result, out = full_report, full_report["out"]
    assert result["html"] == str(out / "report.html")
    assert result["markdown"] == str(out / "report.md")
    assert result["sections"] == {
        "champion": "ok",
        "leaderboard": "ok",
        "evaluation": "ok",
        "drift": "ok",
        "serving": "ok",
        "live": "empty",  # the champion alone, no labels: one line says so
    }
    html = Path(result["html"]).read_text()
    assert_self_contained(html)
    for heading in (
        "Champion",
        "Promotion history",
        "Leaderboard",
        "Predicted vs actual",
        "Error by slice",
        "Permutation feature importance",
        "Drift history",
        "Reference vs current",
        "Requests per day",
        "latency p99 (ms)",
        "error rate (rows)",
        "Distribution of predictions",
    ):
        assert heading in html, heading
    assert html.count('src="data:image/png;base64,') == result["images"] >= 8
    champion = full_state["champion"]
    assert f"<td>version</td><td>{champion.version}</td>" in html
    # The leaderboard lists both versions with CV and holdout metrics.
    board = html.split('id="leaderboard"')[1].split("<h2")[0]
    assert board.count("<tr>") == 3 and "holdout RMSE" in board and "cv RMSE" in board
    # The drift table shows the latest run: MedInc x 1.3 marked drift.
    drift_part = html.split('id="drift"')[1].split("<h2")[0]
    assert re.search(
        r"<td>MedInc</td>(<td>[^<]*</td>){7}<td><span class=\"drift\">drift", drift_part
    )
    # Serving: two days of traffic, one rejected request per day.
    serving = html.split('id="serving"')[1]
    rows = 2 * (full_state["test_rows"] + 1)
    assert f"<td>logged rows</td><td>{rows}</td>" in serving
    assert f"<td>error rate (rows)</td><td>{100 * 2 / rows:.2f} %</td>" in serving
    markdown = Path(result["markdown"]).read_text()
    images = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+\.png)\)", markdown)
    assert len(images) == result["images"]
    for rel in images:
        assert (out / rel).read_bytes()[:4] == b"\x89PNG"
    assert "## Drift" in markdown and "| MedInc |" in markdown


def test_rerun_replaces_the_report_atomically(full_state, full_report) -> None:
    out = full_report["out"]
    (out / "report_files" / "stale.png").write_bytes(b"old")
    before = Path(full_report["html"]).stat().st_mtime_ns
    second = build_report(full_state["settings"], out)
    assert second["html"] == out / "report.html"
    assert Path(second["html"]).stat().st_mtime_ns >= before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp files
    assert not (out / "report_files" / "stale.png").exists()
    assert (Path(second["html"]).stat().st_mode & 0o044) == 0o044  # readable by others


def test_a_log_damaged_past_its_first_page_is_exit_4_and_writes_nothing(
    full_state, full_report, tmp_path: Path, capsys
) -> None:
    # The header and the schema page read fine, the table pages do not ("database disk
    # image is malformed"): the report used to turn that into section notes under an
    # exit 0, where drift and evaluate --live stop with exit 4.
    import shutil

    import yaml

    damaged = damaged_copy(full_state["settings"].serve.request_log, tmp_path / "requests.db")
    config = yaml.safe_load((full_state["tmp"] / "config.yaml").read_text())
    config["serve"]["request_log"] = str(damaged)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    shutil.copytree(full_report["out"], out)  # a previous report, to be left as it is
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    code = run(["--config", str(tmp_path / "config.yaml"), "report", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 4, captured.err
    assert captured.out == "" and "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and captured.err.rstrip().endswith(errors[0]), captured.err
    assert errors[0].startswith(f"Error: the request log {damaged} is not a usable SQLite")
    assert "database disk image is malformed" in errors[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    made = {p.name for p in tmp_path.iterdir()} - {"requests.db-wal", "requests.db-shm"}
    assert made == {"config.yaml", "out", "requests.db"}  # (SQLite's own files aside)
    # A folder the report would have made is taken back.
    code = run(
        ["--config", str(tmp_path / "config.yaml"), "report", "--out", str(tmp_path / "a" / "b")]
    )
    assert code == 4 and not (tmp_path / "a").exists()


def test_model_without_traffic_says_so(full_state, tmp_path: Path) -> None:
    settings = full_state["settings"]
    quiet = settings.model_copy(
        update={"serve": settings.serve.model_copy(update={"request_log": tmp_path / "none.db"})}
    )
    result = build_report(quiet, tmp_path / "out")
    assert result["sections"]["champion"] == "ok" and result["sections"]["evaluation"] == "ok"
    assert result["sections"]["drift"] == "empty" and result["sections"]["serving"] == "empty"
    html = Path(result["html"]).read_text()
    assert "no drift run" in html and "no traffic yet" in html
    assert_self_contained(html)


def test_live_rmse_stands_beside_each_versions_holdout_rmse(
    full_state, tmp_path: Path, write_request_log: Any
) -> None:
    """A champion shadowed by the other registered version, every row labelled: the live
    table shows each version's holdout RMSE from the registry and the live/holdout ratio."""
    from helpers import add_feedback

    from housing_mlops import registry

    settings = full_state["settings"]
    champion = full_state["champion"].version
    other = next(v.version for v in registry.list_versions(settings) if v.version != champion)
    holdout = {v.version: v.metrics["holdout_rmse"] for v in registry.list_versions(settings)}
    log = tmp_path / "live.db"
    rows = [
        {
            "ts": 1_700_000_000.0 + i,
            "request_id": f"r{i}",
            "model_name": "m",
            "model_version": champion,
            **{c: 1.0 for c in FEATURES},
            "prediction": 2.0,
            "latency_ms": 1.0,
            "status": 200,
            "role": "champion",
            "shadow_version": other,
            "shadow_prediction": 2.5,
        }
        for i in range(50)
    ]
    write_request_log(log, rows)
    add_feedback(log, [(f"r{i}", 0, 2.4) for i in range(50)])  # champion 0.4 off, other 0.1
    live = settings.model_copy(
        update={"serve": settings.serve.model_copy(update={"request_log": log})}
    )
    result = build_report(live, tmp_path / "out")
    assert result["sections"]["live"] == "ok"
    markdown = Path(result["markdown"]).read_text().split("## Champion vs challenger")[1]
    fmt = lambda v: f"{v:.4g}"  # noqa: E731 - the report's number format
    ratio = 0.4 / holdout[champion]
    assert (
        f"| champion | {champion} | 50 | 0.4 | 0.4 | {fmt(holdout[champion])} | {fmt(ratio)} |"
        in markdown
    ), markdown
    assert f"| challenger | {other} | 50 | 0.1 | 0.1 | {fmt(holdout[other])} |" in markdown

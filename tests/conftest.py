"""Shared fixtures: the real archive (optional locally, mandatory in CI) and isolation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"


def _real_archive() -> Path | None:
    value = os.environ.get("HOUSING_DATA_ARCHIVE")
    candidates = [Path(value)] if value else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "cal_housing.tgz")
    for path in candidates:
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="session")
def real_archive() -> Path:
    """The real StatLib archive; skipped (or failed under HOUSING_REQUIRE_REAL_DATA=1)."""
    path = _real_archive()
    if path is None:
        msg = (
            "real California Housing archive not found: set HOUSING_DATA_ARCHIVE "
            "or place it at ../shared/data/cal_housing.tgz"
        )
        if os.environ.get("HOUSING_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit deployment overrides from the developer's shell."""
    for name in (
        "MLFLOW_TRACKING_URI",
        "HOUSING_MLFLOW_ARTIFACT_LOCATION",
        "HOUSING_REGISTERED_MODEL",
        "HOUSING_SERVE_HOST",
        "HOUSING_SERVE_PORT",
        "HOUSING_SERVE_WORKERS",
        "HOUSING_REQUEST_LOG",
    ):
        monkeypatch.delenv(name, raising=False)

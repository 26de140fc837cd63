"""The architecture contracts of pyproject.toml (`lint-imports`, run by `make lint`) bite.

The package is copied to a temporary folder, one forbidden import is added to the copy, and
lint-imports runs on the copy with the project's own contracts: the contract it breaks must
be reported BROKEN, naming the import, where the untouched copy keeps it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="lint-imports is not installed (dev extra)"
)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "housing_mlops", tmp_path / "housing_mlops")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # The copy comes first on the path, ahead of the installed (editable) package.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _status(output: str, contract: str) -> str:
    """KEPT or BROKEN for one contract, from lint-imports' summary."""
    flat = " ".join(output.split())  # long names wrap in the summary
    match = re.search(re.escape(contract) + r" (KEPT|BROKEN)", flat)
    assert match, f"contract {contract!r} missing from the output:\n{output}"
    return match.group(1)


def _inject(root: Path, module: str, line: str) -> None:
    path = root / "housing_mlops" / module
    text = path.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in text
    path.write_text(text.replace(marker, f"{marker}\n{line}\n", 1))


@pytest.mark.parametrize(
    ("module", "line", "contract", "reported"),
    [
        # A second MLflow user: only the registry may import it.
        (
            "columns.py",
            "import mlflow  # noqa",
            "MLflow is imported only by the registry",
            "housing_mlops.columns -> mlflow",
        ),
        # A lower layer reaching up: the registry must not depend on a stage.
        (
            "registry/read.py",
            "import housing_mlops.promote  # noqa",
            "Layers: cli -> stages -> internals -> config -> errors, columns",
            "housing_mlops.registry.read -> housing_mlops.promote",
        ),
        # Spark outside the Spark engine: the local engine must run without pyspark.
        (
            "predict/local.py",
            "import pyspark  # noqa",
            "Apache Spark is imported only by the Spark engine of housing predict",
            "housing_mlops.predict.local -> pyspark",
        ),
        # Native code loaded outside inference.compiled.
        (
            "predict/local.py",
            "import ctypes  # noqa",
            "Native code (ctypes, the C compiler) is loaded and run only by inference.compiled",
            "housing_mlops.predict.local -> ctypes",
        ),
        # The shared input rules reaching up into the service that uses them.
        (
            "validation.py",
            "import housing_mlops.serving.schemas  # noqa",
            "Layers: cli -> stages -> internals -> config -> errors, columns",
            "housing_mlops.validation -> housing_mlops.serving.schemas",
        ),
        # The library printing through the CLI's output module.
        (
            "config.py",
            "import housing_mlops.output  # noqa",
            "Layers: cli -> stages -> internals -> config -> errors, columns",
            "housing_mlops.config -> housing_mlops.output",
        ),
        # Inside a package: a backend importing the module that chooses between backends
        # (the import circle store.postgres <-> store.sink the layers ended).
        (
            "store/postgres.py",
            "import housing_mlops.store.sink  # noqa",
            "store: the users of a connection over the openers over the PostgreSQL backend "
            "over what they all share",
            "housing_mlops.store.postgres -> housing_mlops.store.sink",
        ),
        # An engine reaching up into the run that dispatches to it.
        (
            "predict/local.py",
            "import housing_mlops.predict.runner  # noqa",
            "predict: the run over the engines (Spark reuses local) over the job over the scoring",
            "housing_mlops.predict.local -> housing_mlops.predict.runner",
        ),
        # The report's data structure depending on how it is drawn.
        (
            "report/page.py",
            "import housing_mlops.report.render  # noqa",
            "report: the sections over their rendering over the page they share",
            "housing_mlops.report.page -> housing_mlops.report.render",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str, reported: str
) -> None:
    clean = _copy(tmp_path / "clean")
    assert _status(_lint_imports(clean).stdout, contract) == "KEPT"

    broken = _copy(tmp_path / "broken")
    _inject(broken, module, line)
    result = _lint_imports(broken)
    assert result.returncode != 0
    assert _status(result.stdout, contract) == "BROKEN"
    assert reported in result.stdout, result.stdout

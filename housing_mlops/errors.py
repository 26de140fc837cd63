"""Named errors and their exit codes.

The library raises these; ``cli.run`` is the one place that turns them into a line
``Error: ...`` on stderr and the exit code below. Messages say what to do next.
"""

from __future__ import annotations

EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATA = 4
EXIT_MODEL = 5
EXIT_GATE = 6
EXIT_INSUFFICIENT = 7


class HousingError(Exception):
    """Base class: an expected failure with a message meant for the user.

    ``label`` starts the line ``cli.run`` prints on stderr (``Error: ...``); a decision
    (a gate saying no, drift found) is not a failure and says so with its own label.
    ``payload`` is the structured result behind a decision, printed by ``--json``.
    """

    exit_code = EXIT_UNEXPECTED
    label = "Error"

    def __init__(self, message: str = "", *, payload: object | None = None) -> None:
        super().__init__(message)
        self.payload = payload


class UsageError(HousingError):
    """A malformed option value (for example a bad ``--since``)."""

    exit_code = EXIT_USAGE


class ConfigError(HousingError):
    """The YAML config is missing, unreadable or invalid."""

    exit_code = EXIT_CONFIG


class DataError(HousingError):
    """Download, checksum, archive, schema or data-file problems."""

    exit_code = EXIT_DATA


class UnusableLogError(DataError):
    """The request log is not a usable SQLite database (not one at all, or damaged).

    Every reader stops on it (exit 4) rather than reporting an empty log: ``housing
    report`` lets no section turn it into a note under an exit 0.
    """


class ModelError(HousingError):
    """Training, model loading, MLflow tracking or registry problems."""

    exit_code = EXIT_MODEL


class GateRejected(HousingError):
    """A gate said no: promotion rejected (a decision; ``payload`` is the decision object)."""

    exit_code = EXIT_GATE
    label = "Refused"


class DriftFound(HousingError):
    """Drift check verdict: a feature or the prediction marked drift (a finding, exit 6)."""

    exit_code = EXIT_GATE
    label = "Drift"


class InsufficientDataError(HousingError):
    """Drift cannot be judged: too few rows in the window, or no log / reference."""

    exit_code = EXIT_INSUFFICIENT

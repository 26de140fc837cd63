"""The Typer app and what every command shares: --config/-c, --verbose/-v, --json, logging.

Declared once and accepted before or after the subcommand (like DVC's parent parser), so
`housing train --config x.yaml` and `housing --config x.yaml train` mean the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from housing_mlops import __version__

if TYPE_CHECKING:  # pragma: no cover
    from housing_mlops.config import Settings

# Plain Click help and errors (no Rich panels): one `Error:` line is the contract, and
# boolean flags show no `<bool>` metavar.
app = typer.Typer(
    name="housing",
    help="California Housing from raw data to a monitored prediction service.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DEFAULT_CONFIG = Path("configs/default.yaml")
CONFIG_HELP = "YAML config file (default configs/default.yaml)."
VERBOSE_HELP = "Debug logging and tracebacks on errors."


RequestLogOpt = Annotated[
    str | None,
    typer.Option(
        "--request-log",
        metavar="PATH_OR_URL",
        help="Request log: a SQLite file or postgresql://user:password@host:port/database.",
        show_default="serve.request_log, $HOUSING_REQUEST_LOG, data/requests.db",
    ),
]


@dataclass
class AppState:
    config_path: Path
    verbose: bool

    def settings(self, request_log: str | None = None) -> Settings:
        """The config (with ``--request-log`` over serve.request_log when given)."""
        from housing_mlops.config import load_config, with_request_log

        return with_request_log(load_config(self.config_path), request_log)


def state(ctx: typer.Context) -> AppState:
    """The options of this invocation, kept on the root context."""
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):  # invoked without the callback (tests)
        root.obj = AppState(DEFAULT_CONFIG, False)
    return root.obj


def _set_config(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:  # given after the subcommand: wins over the one before it
        state(ctx).config_path = value
    return value


def _set_verbose(ctx: typer.Context, value: bool) -> bool:
    if value:
        state(ctx).verbose = True
        configure_logging(True)
    return value


# The subcommand's own --config/--verbose: same names and help as the app's.
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", metavar="PATH", help=CONFIG_HELP, callback=_set_config),
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help=VERBOSE_HELP, callback=_set_verbose)
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"housing {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: Annotated[
        Path,
        typer.Option("--config", "-c", metavar="PATH", help=CONFIG_HELP, show_default=False),
    ] = DEFAULT_CONFIG,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=VERBOSE_HELP)] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """California Housing from raw data to a monitored prediction service.

    --config/-c and --verbose/-v work before or after the command:
    `housing train --config configs/default.yaml` = `housing -c configs/default.yaml train`.
    """
    ctx.obj = AppState(config_path=config, verbose=verbose)
    configure_logging(verbose)


def configure_logging(verbose: bool) -> None:
    """Library logs to stderr through Rich; DEBUG for housing_mlops under --verbose."""
    from rich.logging import RichHandler

    from housing_mlops.output import stderr

    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=stderr, show_path=False, rich_tracebacks=verbose)
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("housing_mlops").setLevel(logging.DEBUG if verbose else logging.INFO)

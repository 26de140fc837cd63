"""The ``housing`` command: thin wrappers over the library modules.

``app`` holds the shared options, ``commands`` the subcommands, ``render`` how results
look. ``run`` is the one place that maps errors to exit codes.
"""

from __future__ import annotations

import sys

import typer

from housing_mlops.cli import commands as _commands  # noqa: F401 - registers the subcommands
from housing_mlops.cli.app import app
from housing_mlops.errors import EXIT_UNEXPECTED, EXIT_USAGE, HousingError

__all__ = ["app", "main", "run"]


def _click_exception_types() -> tuple[type[Exception], type[Exception]]:
    """Click's exception base and its usage error (Typer >= 0.29 carries its own Click)."""
    from typer._click.exceptions import ClickException
    from typer._click.exceptions import UsageError as ClickUsageError

    return ClickException, ClickUsageError


def _command_path(command: object, args: list[str]) -> str:
    """``housing`` and the subcommand ``args`` name, for the help hint of an error raised
    where Click's context is gone (a missing option value, the library's UsageError)."""
    names = getattr(command, "commands", {})
    value_of_option = False
    for arg in args:
        if value_of_option:
            value_of_option = False
        elif arg in ("-c", "--config"):
            value_of_option = True
        elif arg in names:
            return f"housing {arg}"
        elif not arg.startswith("-"):
            break
    return "housing"


def _help_hint(command_path: str) -> str:
    return f"Try '{command_path} -h' for help."


# `housing predict data/*.parquet` unquoted: the shell hands over every file it matched.
_ONE_INPUT = (
    "housing predict reads one input: quote a glob ('data/*.parquet') so that housing "
    "expands it, or name the folder"
)


def _usage_error_lines(exc: Exception, usage_type: type[Exception], fallback: str) -> list[str]:
    message = exc.format_message()  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    command = getattr(getattr(ctx, "command", None), "name", None)
    if command == "predict" and message.startswith("Got unexpected extra argument"):
        message = f"{message}: {_ONE_INPUT}"
    lines = [f"Error: {message}"]
    if isinstance(exc, usage_type):
        lines.append(_help_hint(ctx.command_path if ctx is not None else fallback))
    return lines


def _print_decision(exc: HousingError, as_json: bool) -> None:
    """A decision (exit 6) prints its object on stdout under --json, then its line."""
    if as_json and exc.payload is not None:
        from housing_mlops.output import print_json

        print_json(exc.payload)


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl+C


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: the one place errors become exit codes.

    Every failure is one line on stderr, `Error: ...` (a usage error adds a
    `Try 'housing X -h' for help.` hint), and a documented exit code. A decision that is
    not a failure (the gate refusing, drift found) prints its own label instead.
    """
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in args)
    as_json = "--json" in args
    click_error, click_usage_error = _click_exception_types()
    try:
        result = command.main(args=args, prog_name="housing", standalone_mode=False)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `housing … --json | head`: the reader left; main() is quiet
        raise
    except SystemExit:
        # Typer answers a broken pipe inside a command by wrapping stdout and exiting 1
        # (as if something unexpected failed): the same reader that left, for main().
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            raise BrokenPipeError(32, "the reader of stdout left") from None
        raise
    except click_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `housing`: the help, exit 0
            print(exc.format_message())  # type: ignore[attr-defined]
            return 0
        lines = _usage_error_lines(exc, click_usage_error, _command_path(command, args))
        print("\n".join(lines), file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    except HousingError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        _print_decision(exc, as_json)
        print(f"{exc.label}: {exc}", file=sys.stderr)
        if exc.exit_code == EXIT_USAGE:  # a bad value the library caught: the same hint
            print(_help_hint(_command_path(command, args)), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if type(exc).__name__ == "Abort":  # Click's abort (Ctrl+D at a prompt)
            print("Error: aborted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if verbose:
            import traceback

            traceback.print_exc()
        print(
            f"Error: unexpected {type(exc).__name__}: {exc} (rerun with -v for the traceback)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
    # Without standalone mode Click returns typer.Exit's code (or the command's None).
    if result == EXIT_INTERRUPTED:
        # Typer turns Ctrl+C inside a command into Exit(130) and returns the code, so the
        # KeyboardInterrupt above never arrives; no command exits 130 on its own.
        print("Error: interrupted", file=sys.stderr)
    return result if isinstance(result, int) else 0


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command cut off by `head`


def main() -> None:
    """Console-script entry point."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would print a traceback flushing stdout at exit: point it at /dev/null.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code)

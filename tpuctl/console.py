"""One console for all output, and `abort` for every user-facing error."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_FAILED = 1  # something went wrong on a worker
EXIT_BAD_INPUT = 2  # the user's input was refused; nothing changed remotely


class TpuctlError(Exception):
    """An error whose message is meant for the user, one line, no traceback."""

    exit_code = EXIT_FAILED


class BadInput(TpuctlError):
    """Refused input: exit 2, and nothing was changed on any worker."""

    exit_code = EXIT_BAD_INPUT


def abort(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)

"""One console for all output, `abort` for every user-facing error, and `printable`/`shown` for any
text that comes from a worker (a log line, a path, an error): it may hold rich markup or terminal
escape sequences, and neither may reach the terminal as such."""

from __future__ import annotations

import re
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_FAILED = 1  # something went wrong on a worker
EXIT_BAD_INPUT = 2  # the user's input was refused; nothing changed remotely

# Control characters (C0 but tab and newline, DEL, C1) and the Unicode controls that reorder text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every control character shown as an escape (`\\x1b[31m`), so a log line cannot
    move the cursor, recolour the terminal or set its title."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode(), text)


def shown(text: str) -> str:
    """Worker text for a rich-markup context (print, tables): printable, and its brackets literal."""
    return escape(printable(text))


class TpuctlError(Exception):
    """An error whose message is meant for the user, one line, no traceback."""

    exit_code = EXIT_FAILED


class BadInput(TpuctlError):
    """Refused input: exit 2, and nothing was changed on any worker."""

    exit_code = EXIT_BAD_INPUT


def abort(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {shown(message)}")
    raise typer.Exit(code)

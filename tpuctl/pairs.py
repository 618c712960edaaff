"""KEY=VALUE text, parsed in one place: options (`--set`, `--env`, `--label`), settings written as
comma-separated name=value pairs, the leading assignments of a command, and the key=value lines that
remote scripts print. Only the first `=` separates: a value may hold more."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tpuctl.console import BadInput

SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ANY_KEY = re.compile(r".*", re.DOTALL)
NONEMPTY_KEY = re.compile(r".+", re.DOTALL)


def split_pair(text: str, key: re.Pattern[str] = ANY_KEY) -> tuple[str, str] | None:
    """`KEY=VALUE` as (KEY, VALUE); None when `text` has no `=` or its KEY does not match `key`."""
    name, sep, value = text.partition("=")
    return (name, value) if sep and key.fullmatch(name) else None


def parse_pairs(items: Iterable[str], option: str, expected: str, key: re.Pattern[str] = NONEMPTY_KEY) -> dict[str, str]:
    """Repeated `option KEY=VALUE` values (a later KEY wins); the first that is none is refused:
    `bad OPTION 'item': expected KEY=VALUE<expected>`."""
    found = {}
    for item in items:
        pair = split_pair(item, key)
        if pair is None:
            raise BadInput(f"bad {option} {item!r}: expected KEY=VALUE{expected}")
        found[pair[0]] = pair[1]
    return found


def leading_assignments(words: Iterable[str]) -> dict[str, str]:
    """The `NAME=value` words a command starts with (as in `STEPS=1 python train.py`)."""
    found = {}
    for word in words:
        pair = split_pair(word, SHELL_NAME)
        if pair is None:
            break
        found[pair[0]] = pair[1]
    return found


def fields(text: str) -> dict[str, str]:
    """The `key=value` lines a remote script printed (a later line wins; other lines are ignored)."""
    return dict(pair for line in text.splitlines() if (pair := split_pair(line, SHELL_NAME)))


def values_of(text: str, key: str) -> list[str]:
    """Every value of the `key=` lines a script printed, in order (for keys printed more than once)."""
    return [pair[1] for line in text.splitlines() if (pair := split_pair(line)) and pair[0] == key]

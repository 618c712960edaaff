"""The local `.env` that `tpuctl secrets push` copies: validated here, its values never shown.

Runs on a worker see each value exactly as python-dotenv reads it: besides the file itself, the
push writes `<env_file>.values`, the parsed KEY=VALUE records separated by NUL bytes, which the
runner exports without any shell parsing (no `$`, backtick, `~` or quote is interpreted). A value
that uses `${...}` is refused, because python-dotenv expands it from the environment of whoever
reads the file, which differs between this machine and each worker.

Every error names the file, the line and the key, never the value.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dotenv.parser import parse_stream
from dotenv.variables import Variable, parse_variables

from tpuctl.console import BadInput

WANDB_KEY_MIN_CHARS = 40
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class EnvFile:
    path: Path
    data: bytes
    values: dict[str, str]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.values)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def records(self) -> bytes:
        """What runs load: `KEY=VALUE` records, each ended by a NUL byte (no value can hold one)."""
        return b"".join(f"{key}={value}".encode() + b"\0" for key, value in self.values.items())

    @property
    def records_sha256(self) -> str:
        return hashlib.sha256(self.records).hexdigest()


def load_env_file(path: Path) -> EnvFile:
    """Read and validate a .env; refuse one that git tracks."""
    if not path.is_file():
        raise BadInput(f"env file {str(path)!r} not found: create it from .env.example")
    _refuse_if_tracked(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"env file {str(path)!r} is not UTF-8 text") from None
    values = _checked_values(path, text)
    if not values:
        raise BadInput(f"env file {str(path)!r} defines no variables: expected KEY=VALUE lines")
    return EnvFile(path, data, values)


def _checked_values(path: Path, text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        stripped = binding.original.string.lstrip()
        line = binding.original.line + binding.original.string[: len(binding.original.string) - len(stripped)].count("\n")
        where = f"{path}, line {line}"
        if binding.error or (binding.key is not None and binding.value is None):
            raise BadInput(f"malformed env file: {where} is not KEY=VALUE")
        if binding.key is None:
            continue
        value = binding.value or ""
        if not _SHELL_NAME.fullmatch(binding.key):
            raise BadInput(f"malformed env file: {where}: key {binding.key!r} is not a shell variable name")
        if "\0" in value:
            raise BadInput(f"malformed env file: {where}: the value of {binding.key} holds a NUL byte")
        if any(isinstance(atom, Variable) for atom in parse_variables(value)):
            raise BadInput(f"env file {where}: the value of {binding.key} uses ${{...}}, which python-dotenv expands "
                           "differently on each machine; write the value out")
        if binding.key == "WANDB_API_KEY" and len(value) < WANDB_KEY_MIN_CHARS:
            raise BadInput(f"WANDB_API_KEY in {path} has {len(value)} characters; expected "
                           f"{WANDB_KEY_MIN_CHARS} or more (a truncated key?)")
        values[binding.key] = value
    return values


def _refuse_if_tracked(path: Path) -> None:
    folder = path.resolve().parent
    try:
        tracked = subprocess.run(["git", "-C", str(folder), "ls-files", "--error-unmatch", path.resolve().name],
                                 capture_output=True).returncode == 0
    except FileNotFoundError:  # no git on this machine: nothing can track the file
        return
    if tracked:
        raise BadInput(f"env file {str(path)!r} is tracked by git: refusing to copy a committed secret; "
                       f"run `git rm --cached {path.name}` and add it to .gitignore (then rotate its keys)")

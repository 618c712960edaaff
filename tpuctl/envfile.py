"""The local `.env` that `tpuctl secrets push` copies: validated here, its values never shown.

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

from tpuctl.console import BadInput

WANDB_KEY_MIN_CHARS = 40
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The runner sources the file with bash: an unquoted value with these characters would not survive.
_UNSAFE_UNQUOTED = re.compile(r"[\s;&|<>()`'\"\\]")


@dataclass(frozen=True)
class EnvFile:
    path: Path
    data: bytes
    keys: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


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
    keys = tuple(_checked_keys(path, text))
    if not keys:
        raise BadInput(f"env file {str(path)!r} defines no variables: expected KEY=VALUE lines")
    return EnvFile(path, data, keys)


def _checked_keys(path: Path, text: str) -> list[str]:
    keys = []
    for binding in parse_stream(io.StringIO(text)):
        stripped = binding.original.string.lstrip()
        line = binding.original.line + binding.original.string[: len(binding.original.string) - len(stripped)].count("\n")
        where = f"{path}, line {line}"
        if binding.error or (binding.key is not None and binding.value is None):
            raise BadInput(f"malformed env file: {where} is not KEY=VALUE")
        if binding.key is None:
            continue
        if not _SHELL_NAME.fullmatch(binding.key):
            raise BadInput(f"malformed env file: {where}: key {binding.key!r} is not a shell variable name")
        raw_value = stripped.split("=", 1)[1].lstrip()
        if not raw_value.startswith(("'", '"')) and _UNSAFE_UNQUOTED.search(binding.value or ""):
            raise BadInput(f"malformed env file: {where}: the value of {binding.key} has spaces or shell "
                           "characters; put it in quotes")
        if binding.key == "WANDB_API_KEY" and len(binding.value or "") < WANDB_KEY_MIN_CHARS:
            raise BadInput(f"WANDB_API_KEY in {path} has {len(binding.value or '')} characters; expected "
                           f"{WANDB_KEY_MIN_CHARS} or more (a truncated key?)")
        keys.append(binding.key)
    return keys


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

"""Quoting for bash scripts that run on a worker."""

from __future__ import annotations

import shlex


def rpath(path: str) -> str:
    """A remote path as a bash word: `~/x` expands to the worker's $HOME, everything else is quoted."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def script(*lines: str) -> str:
    """A bash script that stops at the first failing command and never traces (no secret echo)."""
    return "\n".join(("set -euo pipefail", "set +x", *lines, ""))


def preview(index: int, user: str, host: str, port: int, text: str, proxy: str | None = None) -> str:
    """What --dry-run prints for one worker: where the script would run (through which ProxyCommand),
    and the script itself."""
    via = f"-o ProxyCommand={shlex.quote(proxy)} " if proxy else ""
    return (f"# worker {index}: ssh {via}-p {port} {shlex.quote(f'{user}@{host}')} bash -s <<'EOF'\n"
            f"{text.rstrip()}\nEOF")

"""The one place that turns values into shell text.

Every script that runs on a worker is a real bash file in `tpuctl/remote/scripts/` (package data,
shipped in the wheel, linted by shellcheck in the tests). A script names its inputs in a
`# params:` line and the shared functions it needs in a `# uses:` line (files in `scripts/lib/`).
`render(name, **values)` puts a generated block of single-quoted variable assignments on top of it:
a value never becomes shell syntax, whatever quotes, `$()`, backticks, newlines or heredoc
terminators it holds. Paths stay literal too: `expand_home` on the worker turns a leading `~/`
into that worker's $HOME.

Nothing else in tpuctl builds shell text from a value: scripts get their values here, or as data
(SFTP, base64). Session.exec enforces it: it runs a RenderedScript and refuses any other text.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from tpuctl.console import BadInput

Value = str | int | Sequence[str]
_HEADER = re.compile(r"^# (params|uses):(.*)$", re.MULTILINE)


class RenderedScript(str):
    """Text that render() produced: the only kind of script Session.exec runs on a worker."""


@dataclass(frozen=True)
class ScriptFile:
    name: str
    text: str
    params: tuple[str, ...]
    uses: tuple[str, ...]


@cache
def script_file(name: str) -> ScriptFile:
    """`scripts/<name>.sh` with its declared params and the library files it uses."""
    text = (resources.files("tpuctl.remote") / "scripts" / f"{name}.sh").read_text()
    header = {key: tuple(words.split()) for key, words in _HEADER.findall(text)}
    return ScriptFile(name, text, header.get("params", ()), header.get("uses", ()))


def quote(value: str, what: str = "value") -> str:
    """One value as one literal bash word. NUL cannot be passed through a shell at all: refused."""
    if "\0" in value:
        raise BadInput(f"{what}: expected text without NUL bytes, received {value!r}")
    return shlex.quote(value)


def assignment(name: str, value: Value) -> str:
    """`name='value'`, or a bash array `name=('a' 'b')` for a sequence of words. A `$`, backtick or
    leading `~` in a value is literal on purpose (scripts expand `~/` with expand_home): shellcheck
    is told so on the line before."""
    words = [str(value)] if isinstance(value, str | int) else list(value)
    text = f"{name}={quote(words[0], name)}" if isinstance(value, str | int) else \
        f"{name}=(" + " ".join(quote(word, name) for word in words) + ")"
    codes = [code for code, found in (("SC2016", any("$" in w or "`" in w for w in words)),
                                      ("SC2088", any(w.startswith("~") for w in words))) if found]
    return (f"# shellcheck disable={','.join(codes)}  # literal data: nothing in it expands\n" if codes else "") + text


def render(script_name: str, /, **values: Value) -> RenderedScript:
    """The script `script_name`, ready for `bash -s`: strict mode, the quoted values, the library, the body.

    The values must be exactly the script's declared params: a missing or extra one is a bug here.
    """
    script = script_file(script_name)
    if set(values) != set(script.params):
        raise ValueError(f"{script_name}.sh takes {sorted(script.params)}, was given {sorted(values)}")
    parts = ["#!/usr/bin/env bash",
             f"# {script_name}.sh from tpuctl; the values below were quoted by tpuctl.remote.render",
             "set -euo pipefail",
             "set +x  # never trace: a trace would print values",
             *(assignment(param, values[param]) for param in script.params)]
    for library in script.uses:
        parts.append(script_file(f"lib/{library}").text.rstrip("\n"))
    parts.append(script.text.rstrip("\n"))
    return RenderedScript("\n".join(parts) + "\n")


def heredoc_delimiter(text: str, stem: str = "EOF") -> str:
    """A heredoc delimiter that no line of `text` equals, so the text cannot end the heredoc early."""
    lines = set(text.splitlines())
    delimiter, number = stem, 0
    while delimiter in lines:
        number += 1
        delimiter = f"{stem}_{number}"
    return delimiter


def ssh_preview(index: int, user: str, host: str, port: int, text: str, proxy: str | None = None) -> str:
    """What --dry-run prints for one script on one worker: the ssh command that would feed it to
    `bash -s` (through which ProxyCommand), and the script itself, as a heredoc that a copy-paste
    runs unchanged."""
    via = f"-o ProxyCommand={quote(proxy)} " if proxy else ""
    end = heredoc_delimiter(text)
    return f"# worker {index}: ssh {via}-p {port} {quote(f'{user}@{host}')} bash -s <<'{end}'\n{text.rstrip()}\n{end}"


def fill_template(template: str, values: Mapping[str, object]) -> str:
    """A command template (a ProxyCommand) with each placeholder replaced by its value as one quoted
    word: a host or instance name with spaces or quotes stays one argument."""
    return template.format(**{key: quote(str(value), key) for key, value in values.items()})

"""Every `tpuctl ...` line in sops/ parses against the real CLI."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer

from tests.tpuctl.helpers import run
from tpuctl.cli import app

SOPS = Path(__file__).resolve().parents[2] / "sops"


def tpuctl_lines() -> list[tuple[str, str]]:
    found = []
    for path in sorted(SOPS.glob("*.md")):
        inside_block = False
        for line in path.read_text().splitlines():
            if line.startswith("```"):
                inside_block = not inside_block
            elif inside_block and line.startswith("tpuctl "):
                found.append((path.name, line))
    return found


def parse(argv: list[str]) -> tuple[str, dict]:
    """Parse argv exactly as `tpuctl` would, but record the command reached instead of running it."""
    cli = typer.main.get_command(app)
    reached: list[tuple[str, dict]] = []

    def stub_out(group) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                stub_out(command)
            else:
                command.callback = lambda _name=name, **params: reached.append((_name, params))

    stub_out(cli)
    cli.main(args=argv, prog_name="tpuctl", standalone_mode=False)
    assert len(reached) == 1
    return reached[0]


def test_the_sops_hold_commands():
    assert len(tpuctl_lines()) >= 15


@pytest.mark.parametrize("source, line", tpuctl_lines(), ids=[line for _, line in tpuctl_lines()])
def test_sop_line_parses(source, line):
    name, params = parse(shlex.split(line)[1:])
    assert name in line.split()
    assert isinstance(params, dict)


@pytest.mark.parametrize("argv, expected", [
    (["sync", "--no-such-flag"], "No such option: --no-such-flag (see tpuctl sync --help)"),
    (["stop", "--grace", "soon"], "Invalid value for '--grace'"),
    (["nosuchcommand"], "No such command 'nosuchcommand' (see tpuctl --help)"),
])
def test_a_wrong_line_is_one_clear_error(argv, expected):
    result = run(*argv)
    assert result.code == 2 and result.err.startswith("error: ") and expected in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err

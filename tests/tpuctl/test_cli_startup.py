"""The CLI starts fast: no paramiko, google-cloud, matplotlib or jax at `--help`."""

from __future__ import annotations

import pytest

from tests.tpuctl.helpers import HEAVY, startup_imports


@pytest.mark.parametrize("args", [["--help"], ["sync", "--help"], ["launch", "--help"], ["secrets", "push", "--help"],
                                  ["status", "--help"], ["smoke", "--help"], ["trust", "--help"],
                                  ["config", "--help"], ["up", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(args):
    out, modules = startup_imports(args)
    assert "Usage" in out or "tpuctl" in out
    assert "typer" in modules
    assert not [name for name in HEAVY if name in modules]


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_top_level_help_needs_no_pydantic(args):
    """Typer itself (0.29 here) imports pydantic to coerce a command's options, so only the
    top-level help and --version can stay without it; nothing of ours may add it there."""
    _, modules = startup_imports(args)
    assert "pydantic" not in modules

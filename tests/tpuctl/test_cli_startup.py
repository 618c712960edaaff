"""The CLI starts fast: no fabric, paramiko, google-cloud or jax at `--help`."""

from __future__ import annotations

import pytest

from tests.tpuctl.helpers import HEAVY, startup_imports


@pytest.mark.parametrize("args", [["--help"], ["sync", "--help"], ["launch", "--help"], ["secrets", "push", "--help"],
                                  ["status", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(args):
    out, modules = startup_imports(args)
    assert "Usage" in out or "tpuctl" in out
    assert "typer" in modules
    assert not [name for name in HEAVY if name in modules]

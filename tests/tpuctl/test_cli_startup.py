"""The CLI starts fast: no fabric, paramiko, google-cloud or jax at `--help`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("fabric", "paramiko", "invoke", "google", "jax", "grpc")
PROBE = """
import json, sys
from tpuctl.cli import main
sys.argv = ["tpuctl", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
print("MODULES=" + json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize("args", [["--help"], ["sync", "--help"], ["launch", "--help"], ["secrets", "push", "--help"],
                                  ["status", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(args):
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                         check=True).stdout
    assert "Usage" in out or "tpuctl" in out
    modules = json.loads(out.split("MODULES=")[1])
    assert "typer" in modules
    assert not [name for name in HEAVY if name in modules]

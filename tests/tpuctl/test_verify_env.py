"""`tpuctl verify-env`: the real probe runs in a real Python environment on each worker."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata

import pytest

from tests.tpuctl.helpers import run

pytest.importorskip("jax")


def installed_pins() -> dict[str, str]:
    return {"python": platform.python_version(), "jax": metadata.version("jax"), "jaxlib": metadata.version("jaxlib")}


def test_matching_environment_passes(project1):
    project1.write_config(venv=sys.prefix, expect_backend="cpu", expect_versions=installed_pins())
    result = run("verify-env")
    assert result.code == 0, result.all
    assert "environment ok" in result.out and "cpu" in result.out
    report = json.loads(run("verify-env", "--json").out)
    info = report["workers"][0]["info"]
    assert report["ok"] is True and info["backend"] == "cpu"
    assert info["jax"] == metadata.version("jax") and info["python"] == platform.python_version()
    assert info["device_count"] >= 1 and info["local_device_count"] == info["device_count"]


def test_wrong_backend_and_pin_fail(project1):
    project1.write_config(venv=sys.prefix, expect_versions={"jax": "0.0.1"})
    result = run("verify-env")
    assert result.code == 1
    assert "worker 0: backend 'cpu', expected 'tpu'" in result.out
    assert f"worker 0: jax {metadata.version('jax')}, expected 0.0.1" in result.out
    assert run("verify-env", "--expect-backend", "cpu").out.count("expected 'tpu'") == 0


def test_workers_that_disagree_fail(project3, tmp_path):
    """Worker 2's environment lacks jax: it is named, and the disagreement is reported."""
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    for i, worker in enumerate(project3.workers):
        (worker.home / "venv").symlink_to(bare if i == 2 else sys.prefix)
    project3.write_config(venv="~/venv", expect_backend="cpu", expect_versions=installed_pins())
    result = run("verify-env", "--json")
    assert result.code == 1
    problems = json.loads(result.out)["problems"]
    assert "worker 2: jax failed: ModuleNotFoundError: No module named 'jax'" in problems
    assert f"worker 2: jax not installed, expected {metadata.version('jax')}" in problems
    assert f"workers disagree on jax: {metadata.version('jax')} (workers 0, 1), None (workers 2)" in problems

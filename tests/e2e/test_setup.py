"""`tpuctl setup` on a simulated TPU VM: a ready environment is only checked; a missing venv is created
with uv and the project installed into it from the synced checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tpuctl.sim.vm import SimTpuVm


def provide_uv_and_python(vm: SimTpuVm) -> None:
    """What the simulated VM's image has: uv and a Python 3.12 in ~/.local/bin (on a real VM uv downloads
    the Python when none is there; this machine cannot reach uv's Python downloads)."""
    tools = vm.remote(0, "~/.local/bin")
    tools.mkdir(parents=True, exist_ok=True)
    (tools / "uv").symlink_to(Path(sys.executable).with_name("uv"))
    base = Path(sys.base_prefix) / "bin" / "python3.12"
    (tools / "python3.12").symlink_to(base)


def test_a_ready_environment_is_only_checked_and_verified(sim_vm):
    assert sim_vm.tpuctl("sync").code == 0
    result = sim_vm.tpuctl("setup")
    assert result.code == 0, result.out + result.err
    python = ".".join(map(str, sys.version_info[:3]))
    assert f"Python {python}: ready, nothing to do" in result.out
    assert "environment ok" in result.out and "0.10.2" in result.out  # verify-env's table: the versions


def test_a_missing_venv_is_created_and_the_project_installed_once(sim_vm):
    vm = sim_vm.vm
    provide_uv_and_python(vm)
    assert sim_vm.tpuctl("sync").code == 0
    # The project alone (no extra): its laptop dependencies, quick to install; verify-env then says jax is missing.
    settings = ("--set", "venv=~/fresh venv", "--set", "setup_extra=")
    first = sim_vm.tpuctl(*settings, "setup")
    assert "created the venv, installed the project" in first.out, first.out + first.err
    assert first.code == 1 and "jax" in first.out + first.err
    venv = vm.remote(0, "~/fresh venv")
    probe = "import tpuctl, sys; print(tpuctl.__file__, sys.version_info[:2])"
    shown = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, cwd="/",
                           env={"PATH": "/usr/bin:/bin"})
    assert shown.stdout.startswith(str(vm.remote(0, "~/repo/tpuctl/__init__.py"))) and "(3, 12)" in shown.stdout
    second = sim_vm.tpuctl(*settings, "setup")
    assert "ready, nothing to do" in second.out, second.out + second.err
    assert "installed" not in (vm.remote(0, "~/repo/logs/setup.log")).read_text()


def test_what_is_not_a_venv_is_refused_and_left_alone(sim_vm):
    assert sim_vm.tpuctl("sync").code == 0
    folder = sim_vm.vm.remote(0, "~/not-a-venv")
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = sim_vm.tpuctl("--set", "venv=~/not-a-venv", "setup")
    assert result.code == 1
    assert "~/not-a-venv exists but is not a virtual environment (no bin/python)" in result.err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_an_existing_conda_env_is_used(sim_vm_conda):
    assert sim_vm_conda.tpuctl("sync").code == 0
    result = sim_vm_conda.tpuctl("setup")
    assert result.code == 0, result.out + result.err
    assert "ready, nothing to do" in result.out and "environment ok" in result.out


def test_smoke_sets_up_a_missing_environment_before_verifying(sim_vm):
    provide_uv_and_python(sim_vm.vm)
    result = sim_vm.tpuctl("--set", "venv=~/venv", "--set", "setup_extra=", "smoke")
    assert "no Python environment on some worker: running tpuctl setup" in result.out, result.out + result.err
    assert "created the venv, installed the project" in result.out
    # The project alone brings no jax: verify-env, run again after setup, still fails and says so.
    assert result.code == 1 and "jax" in result.out and "SMOKE FAILED" in result.out

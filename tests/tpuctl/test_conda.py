"""The SOP's VM activates a conda env (`mllm-jax`): launch, verify-env and smoke through the conda
stand-in of tpuctl.sim.conda on a real sshd worker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.tpuctl.helpers import exit_text, logs, run
from tpuctl.sim.conda import install_conda

pytest.importorskip("jax")


@pytest.fixture
def conda_project(project1):
    install_conda(project1.workers[0].home, {"mllm-jax": Path(sys.prefix)})
    project1.write_config(conda_env="mllm-jax", expect_backend="cpu", expect_versions={},
                          smoke_command="./fake_trainer.sh --steps 1")
    project1.write_env()
    assert run("sync").code == 0
    return project1


def test_launch_runs_in_the_conda_env(conda_project):
    command = 'echo "env=$CONDA_DEFAULT_ENV"; python -c "import sys; print(\'prefix=\' + sys.prefix)"'
    result = run("launch", "--", "bash", "-c", command)
    assert result.code == 0, result.all
    assert exit_text(conda_project) == "0"
    log = (logs(conda_project) / "train_latest.log").read_text()
    assert "env=mllm-jax" in log and f"prefix={Path(sys.prefix).resolve()}" in log


def test_a_missing_conda_env_refuses_the_launch(conda_project):
    conda_project.write_config(conda_env="no-such-env")
    result = run("launch", "--", "true")
    assert result.code == 2
    assert "cannot activate the Python environment: conda env no-such-env not found" in result.err
    assert not logs(conda_project).exists()


def test_verify_env_and_smoke_in_the_conda_env(conda_project):
    verified = run("verify-env", "--json")
    assert verified.code == 0, verified.all
    result = run("smoke")
    assert result.code == 0, result.all
    assert "SMOKE PASSED" in result.out

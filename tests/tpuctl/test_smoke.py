"""`tpuctl smoke`: the whole SOP in one command, with a stand-in trainer (the real one: tests/e2e)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.tpuctl.helpers import WANDB_KEY, run
from tpuctl.ops.smoke import rollout_backend

pytest.importorskip("jax")


@pytest.fixture
def smoke_project(project1):
    project1.write_config(venv=sys.prefix, expect_backend="cpu", expect_versions={},
                          smoke_command="./fake_trainer.sh --steps 1")
    project1.write_env()
    return project1


def test_smoke_passes_and_summarises_every_check(smoke_project):
    result = run("smoke")
    assert result.code == 0, result.all
    for check in ("config shows rollout.backend", "step line", "no traceback", "exit code 0"):
        assert check in result.out
    assert "rollout.backend: sglang_jax" in result.out
    assert "step=0 loss=0.000000 entropy=0.2363 reward_mean=0.1250 dt=0.00s" in result.out
    assert "SMOKE PASSED" in result.out
    assert WANDB_KEY not in result.all
    assert (smoke_project.remote(0, "~/repo/logs/smoke_latest.exit")).read_text().strip() == "0"


def test_smoke_fails_on_a_traceback_and_shows_its_last_line(smoke_project):
    result = run("smoke", "--", "./fake_trainer.sh", "--steps", "1", "--raise")
    assert result.code == 1
    assert "ValueError: reward shape mismatch" in result.out
    assert "exit 1" in result.out and "SMOKE FAILED" in result.out


def test_smoke_shows_the_last_log_line_of_a_failure_without_a_traceback(smoke_project):
    message = "config error: steps: expected an integer, received 'x'"
    result = run("smoke", "--", "bash", "-c", f"echo \"{message}\" >&2; exit 2")
    assert result.code == 1 and "SMOKE FAILED" in result.out
    assert f"exit 2: {message}" in result.out


def test_smoke_fails_when_the_config_shows_another_backend(smoke_project):
    result = run("smoke", "--rollout-backend", "jax")
    assert result.code == 1
    assert "rollout.backend: sglang_jax" in result.out and "SMOKE FAILED" in result.out


def test_smoke_stops_at_the_first_failed_step(smoke_project):
    smoke_project.write_config(venv=sys.prefix, expect_backend="tpu", expect_versions={},
                               smoke_command="./fake_trainer.sh")
    result = run("smoke")
    assert result.code == 1
    assert "backend 'cpu', expected 'tpu'" in result.out
    assert "not run" in result.out
    assert not smoke_project.remote(0, "~/repo/logs").exists()  # nothing was launched


def test_smoke_dry_run_prints_every_changing_script_and_runs_nothing(smoke_project):
    result = run("smoke", "--dry-run")
    assert result.code == 0, result.all
    for marker in ("git ls-remote", "git reset --hard", "sftp write .env", "TPUCTL_PROBE", "launch_preflight.sh",
                   "setsid nohup", "argv=(./fake_trainer.sh --steps 1)"):
        assert marker in result.out
    assert WANDB_KEY not in result.all
    assert not smoke_project.remote(0, "~/repo").exists() and not smoke_project.remote(0, "~/.env").exists()


@pytest.mark.parametrize("log, backend", [
    ("rollout:\n  batch_size: 1\n  backend: sglang_jax\nsteps: 1\n", "sglang_jax"),
    ("effective config:\nrollout.backend: jax\n", "jax"),
    ("config error: rollout.backend: expected one of jax, sglang_jax, mock, received 'x'\n", None),
    ("config error: rollout.backend: expected one of jax\nrollout:\n  backend: sglang_jax\n", "sglang_jax"),
])
def test_the_backend_is_read_from_the_printed_config_not_from_an_error_message(log, backend):
    assert rollout_backend(log) == backend


def test_smoke_fails_on_a_run_that_vanishes(smoke_project):
    """The run is killed with its runner (no exit file): smoke must end, failed, saying vanished."""
    done = subprocess.run([sys.executable, "-m", "tpuctl", "smoke", "--", "bash", "-c", "sleep 1; kill -KILL 0"],
                          cwd=smoke_project.folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "vanished" in done.stdout + done.stderr and "SMOKE FAILED" in done.stdout

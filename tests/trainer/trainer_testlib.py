"""Helpers for the trainer tests (a unique module name: tests/ folders have no __init__.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from trainer.config import ENV_OVERRIDES

STEP_LINE = re.compile(r"^step=(\d+) loss=(-?\d+\.\d{6}) entropy=(\d+\.\d{4}) reward_mean=(-?\d+\.\d{4}) "
                       r"dt=(\d+\.\d{2})s$")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a trainer child process: CPU, W&B off, no stray upstream overrides."""
    env = {k: v for k, v in os.environ.items()
           if k not in ENV_OVERRIDES and not k.startswith(("WANDB_", "JAX_NUM", "JAX_COORD", "JAX_PROCESS"))}
    env |= {"JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return env | extra


def run_trainer(args: list[str], cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` in a child process (the console script's code path)."""
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def step_lines(stdout: str) -> list[re.Match]:
    return [m for m in (STEP_LINE.match(line) for line in stdout.splitlines()) if m]

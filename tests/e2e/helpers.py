"""Helpers of the end-to-end tests: a simulated TPU VM with the real trainer on its "VM" side, and the
CLI run against it in its own process, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.tpuctl.helpers import Ran
from tpuctl.sim.demo import CONDA_ENV, prepare_project, smoke_command
from tpuctl.sim.vm import SimTpuVm


@dataclass
class SimProject:
    vm: SimTpuVm
    folder: Path
    model: Path

    def tpuctl(self, *args: str, timeout: float = 600) -> Ran:
        """The real CLI in its own process, run from the project folder as a user would."""
        done = subprocess.run([sys.executable, "-m", "tpuctl", *args], cwd=self.folder, capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})
        return Ran(done.returncode, done.stdout, done.stderr)

    def log(self, index: int, name: str) -> str:
        return self.vm.remote(index, f"~/repo/logs/{name}_latest.log").read_text()


def make_sim_project(root: Path, workers: int, repo: Path, model: Path, conda: bool = False,
                     spot: bool = False) -> tuple[SimTpuVm, Path]:
    """A simulated VM and a project folder targeting it; `conda`: the SOP's conda env instead of a venv;
    `spot`: a spot VM that the fake API can preempt and create again (tpuctl.sim.vm)."""
    vm = SimTpuVm(root / "vm", workers=workers, conda_envs={CONDA_ENV: Path(sys.prefix)} if conda else {},
                  spot=spot).__enter__()
    return vm, prepare_project(vm, root / "project", repo, smoke_command(model))

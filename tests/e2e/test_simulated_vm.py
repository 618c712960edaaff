"""The SOP end to end on a simulated TPU VM: `tpuctl smoke` runs the real trainer with sglang-jax."""

from __future__ import annotations

import shutil

from tpuctl.sim.demo import smoke_command


def test_smoke_runs_the_real_trainer_with_sglang_jax(sim_vm):
    result = sim_vm.tpuctl("smoke")
    assert result.code == 0, result.out[-4000:] + result.err[-2000:]
    log = sim_vm.log(0, "smoke")
    assert "rollout:\n  backend: sglang_jax" in log
    step_lines = [line for line in log.splitlines() if line.startswith("step=0 ")]
    assert len(step_lines) == 1 and step_lines[0].endswith("s") and " dt=" in step_lines[0]
    assert "Traceback" not in log
    assert sim_vm.vm.remote(0, "~/repo/logs/smoke_latest.exit").read_text() == "0\n"
    assert "SMOKE PASSED" in result.out and "rollout.backend: sglang_jax" in result.out
    assert "sim" + "0" * 37 not in result.out + result.err + log  # the W&B key stays secret


def test_the_sops_conda_setup_runs_the_smoke(sim_vm_conda):
    """`python -m tpuctl.sim.demo --conda`: the target names conda_env = "mllm-jax", as the SOP's VM."""
    assert "conda_env" in (sim_vm_conda.folder / "tpuctl.toml").read_text()
    result = sim_vm_conda.tpuctl("smoke")
    assert result.code == 0, result.out[-4000:] + result.err[-2000:]
    assert "SMOKE PASSED" in result.out
    assert "rollout:\n  backend: sglang_jax" in sim_vm_conda.log(0, "smoke")


def test_a_trainer_that_raises_fails_the_smoke_with_its_last_traceback_line(sim_vm, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(sim_vm.model, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated download
    result = sim_vm.tpuctl("smoke", "--", *smoke_command(broken).split())
    assert result.code == 1
    exit_code = int(sim_vm.vm.remote(0, "~/repo/logs/smoke_latest.exit").read_text())
    assert exit_code != 0
    log = sim_vm.log(0, "smoke")
    last = [line for line in log.splitlines() if line and not line[0].isspace()][-1]
    assert "Traceback (most recent call last)" in log
    assert "SMOKE FAILED" in result.out
    assert last.split(":")[0] in result.out  # the exception's type, from the traceback's last line

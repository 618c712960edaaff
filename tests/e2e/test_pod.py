"""A two-host simulated pod: one JAX job over both workers, launched, watched and stopped by tpuctl."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

from tests.helpers import wait_for
from tpuctl.sim.demo import smoke_command

CPU_TINY = ["JAX_PLATFORMS=cpu", "JAX_NUM_CPU_DEVICES=2", "WANDB_MODE=disabled", "python", "-m", "trainer",
            "--preset", "cpu-tiny", "--set", "distributed_timeout_s=60"]
STEP = re.compile(r"^(\[w\d\] )?(step=\d+ loss=\S+ entropy=\S+ reward_mean=\S+) dt=\S+s$")


def steps_of(text: str, label: str = "") -> list[str]:
    """Step lines without their timing, which differs between hosts."""
    return [m[2] for line in text.splitlines() if (m := STEP.match(line)) and (m[1] or "") == label]


POD_WAIT = {"timeout": 120.0, "interval": 0.2}  # a pod's steps take longer than a fake run's


def bucket(pod, name: str) -> list[str]:
    """A checkpoint folder both hosts share, as a pod's gs:// bucket is: multi-host saves are collective."""
    return ["--set", f"checkpoint.dir={pod.vm.root / 'bucket' / name}"]


def states(pod, name):
    return {row["worker"]: row for row in json.loads(pod.tpuctl("status", "--name", name, "--json").out)}


def test_smoke_on_the_pod_runs_one_sglang_jax_engine_per_host(sim_pod):
    command = smoke_command(sim_pod.model, sim_pod.vm.root / "bucket" / "smoke")
    result = sim_pod.tpuctl("smoke", "--", *shlex.split(command))
    assert result.code == 0, result.out[-4000:] + result.err[-2000:]
    assert "SMOKE PASSED" in result.out
    for index in (0, 1):
        log = sim_pod.log(index, "smoke")
        assert "rollout:\n  backend: sglang_jax" in log and "Traceback" not in log
    assert len(steps_of(sim_pod.log(0, "smoke"))) == 1
    assert steps_of(sim_pod.log(0, "smoke")) == steps_of(sim_pod.log(1, "smoke"))


def test_launch_on_all_workers_forms_one_jax_job(sim_pod):
    launched = sim_pod.tpuctl("launch", "--name", "pod", "--", *CPU_TINY, "--set", "steps=3", *bucket(sim_pod, "pod"))
    assert launched.code == 0, launched.err
    followed = sim_pod.tpuctl("tail", "--name", "pod", "--until-exit", "-n", "0")
    assert followed.code == 0, followed.out[-3000:]
    w0, w1 = steps_of(followed.out, "[w0] "), steps_of(followed.out, "[w1] ")
    assert len(w0) == 3 and w0 == w1  # the same global metrics on both hosts: one job, data-parallel
    for index in (0, 1):
        log = sim_pod.log(index, "pod")
        assert f"JAX_PROCESS_ID={index}" not in log  # the variables are in the environment, not echoed
    rows = states(sim_pod, "pod")
    assert [rows[i]["state"] for i in (0, 1)] == ["exited", "exited"]
    assert rows[0]["exit_code"] == rows[1]["exit_code"] == 0
    assert rows[0]["step"]["step"] == rows[1]["step"]["step"] == "2"
    meta = json.loads(sim_pod.vm.remote(1, "~/repo/logs/pod_latest.meta.json").read_text())
    assert meta["distributed"] == {"JAX_COORDINATOR_ADDRESS": f"{sim_pod.vm.sshd[0].address}:8476",
                                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}


def test_stop_ends_the_run_on_both_workers(sim_pod):
    assert sim_pod.tpuctl("launch", "--name", "long", "--", *CPU_TINY, "--set", "steps=100000",
                          *bucket(sim_pod, "long")).code == 0
    wait_for(lambda: all("step=1 " in sim_pod.log(i, "long") for i in (0, 1)), **POD_WAIT)
    rows = states(sim_pod, "long")
    assert rows[0]["state"] == rows[1]["state"] == "running"
    stopped = sim_pod.tpuctl("stop", "--name", "long", "--grace", "60")
    assert stopped.code == 0 and stopped.out.count("stopped (TERM)") == 2
    rows = states(sim_pod, "long")
    assert [rows[i]["state"] for i in (0, 1)] == ["exited", "exited"]
    assert rows[0]["exit_code"] == rows[1]["exit_code"] == 143  # the trainer saved a checkpoint and exited
    for index in (0, 1):
        assert "SIGTERM: saved checkpoint" in sim_pod.log(index, "long")


def test_a_killed_trainer_shows_in_status_and_stop_cleans_the_other(sim_pod):
    assert sim_pod.tpuctl("launch", "--name", "drill", "--", *CPU_TINY, "--set", "steps=100000",
                          *bucket(sim_pod, "drill")).code == 0
    wait_for(lambda: all("step=1 " in sim_pod.log(i, "drill") for i in (0, 1)), **POD_WAIT)
    runner = int(sim_pod.vm.remote(1, "~/repo/logs/drill_latest.pid").read_text())
    trainer = subprocess.run(["pgrep", "-P", str(runner)], capture_output=True, text=True).stdout.split()[0]
    os.kill(int(trainer), signal.SIGKILL)
    rows = wait_for(lambda: (r := states(sim_pod, "drill"))[1]["state"] == "exited" and r, **POD_WAIT)
    assert rows[1]["exit_code"] == 137
    stopped = sim_pod.tpuctl("stop", "--name", "drill", "--grace", "30")
    assert stopped.code == 0
    rows = states(sim_pod, "drill")
    assert rows[0]["state"] == "exited" and rows[1]["exit_code"] == 137
    pid0 = int(sim_pod.vm.remote(0, "~/repo/logs/drill_latest.pid").read_text())
    assert live_members(pid0) == []


def live_members(pgid: int) -> list[int]:
    """The processes of group `pgid` that still run. A zombie has ended: on this machine PID 1 reaps
    orphans late, so `pgrep -g`, which lists zombies too, would see a stopped run for a while."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_a_worker_whose_sshd_is_down_is_one_clear_error_and_worker_0_still_answers(sim_pod):
    sim_pod.vm.sshd[1].stop()
    try:
        result = sim_pod.tpuctl("status", "--name", "pod")
    finally:
        sim_pod.vm.sshd[1].start()
    assert result.code == 1
    assert "w1 failed" in result.err and "connection refused" in result.err
    assert "exited 0" in result.out  # worker 0's run is still reported


def test_a_checkpoint_folder_the_hosts_do_not_share_is_refused_at_start(sim_pod):
    """Each worker's own disk cannot hold a pod's checkpoints: a clear error instead of a hang at the first save."""
    assert sim_pod.tpuctl("launch", "--name", "local-ckpt", "--", *CPU_TINY, "--set", "steps=2").code == 0
    followed = sim_pod.tpuctl("tail", "--name", "local-ckpt", "--until-exit", "-n", "0", timeout=300)
    assert followed.code == 2
    for index in (0, 1):
        log = sim_pod.log(index, "local-ckpt")
        assert "config error: checkpoint.dir: expected a folder every host shares" in log
        assert "process(es) 1 do not see what process 0 writes there" in log

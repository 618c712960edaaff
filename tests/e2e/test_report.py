"""`tpuctl report`, the progress of `tpuctl status` and `tail --progress`, on a real cpu-tiny run of the
trainer on a simulated TPU VM: metrics.jsonl fetched over SFTP by byte offset, read again whole after a
relaunch cut it back, and drawn."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import wait_for
from tests.trainer.helpers import ALWAYS_PANELS, check_offline_page

# No checkpoint before step 1000: a run killed and launched again starts at step 0 and empties its file.
CPU_TINY = ["JAX_PLATFORMS=cpu", "WANDB_MODE=disabled", "python", "-m", "trainer", "--preset", "cpu-tiny",
            "--set", "checkpoint.every_steps=1000"]


def metrics_file(project) -> Path:
    """The trainer's link beside the newest `tiny` run's log, as worker 0 has it."""
    base = project.vm.remote(0, "~/repo/logs/tiny_latest.log").resolve()
    return base.with_name(base.name.removesuffix(".log") + ".metrics.jsonl")


def records(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def expected_progress(data: bytes, done: int) -> tuple[int, float]:
    """Total steps and the mean time/step_s of the last 10 steps before `done`, leaving out step 0 (compilation)."""
    lines = records(data)
    steps = [r for r in lines if r["kind"] == "step" and r["step"] < done][-10:]
    times = [r["time/step_s"] for r in steps if r["step"] != 0]
    return [r for r in lines if r["kind"] == "header"][-1]["total_steps"], sum(times) / len(times)


def fetched_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("tiny: "))


def in_a_terminal(project, *args: str, timeout: float = 300) -> str:
    """`tpuctl ARGS` with its stdout and stderr on a pseudo-terminal, as in a user's shell; what it printed."""
    leader, follower = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "tpuctl", *args], cwd=project.folder, stdin=subprocess.DEVNULL,
                             stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(follower)
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert child.wait(timeout=30) == 0, output.decode(errors="replace")[-3000:]
    return output.decode(errors="replace")


def test_report_status_and_progress_of_a_real_run_then_of_its_relaunch(sim_vm):
    project = sim_vm
    assert project.tpuctl("sync").code == 0
    assert project.tpuctl("launch", "--name", "tiny", "--", *CPU_TINY, "--set", "steps=1000").code == 0
    wait_for(lambda: metrics_file(project).exists() and metrics_file(project).read_bytes().count(b'"kind": "step"') >= 4,
             timeout=300)

    # status: steps done of the total, the mean of the last steps (step 0 left out) and the ETA from them.
    status = project.tpuctl("status", "--name", "tiny", "--json")
    progress = json.loads(status.out)[0]["progress"]
    total, mean = expected_progress(metrics_file(project).read_bytes(), progress["steps_done"])
    assert progress["steps_done"] >= 4 and progress["total_steps"] == total == 1000
    assert abs(progress["mean_step_s"] - mean) < 1e-9
    assert abs(progress["eta_s"] - (1000 - progress["steps_done"]) * mean) < 1e-6
    assert re.search(r"\b\d+/1000\b", project.tpuctl("status", "--name", "tiny").out)

    # report while it runs: the local copy is the remote file's first bytes; the next report adds only new ones.
    first = project.tpuctl("report", "--name", "tiny")
    assert first.code == 0, first.err
    copy = project.folder / "reports" / "tiny" / "tiny.metrics.jsonl"
    remote = metrics_file(project).read_bytes()
    size = len(copy.read_bytes())
    assert remote.startswith(copy.read_bytes()) and f": {size} new bytes, {size} in all" in fetched_line(first.out)
    panels = ALWAYS_PANELS[:4] + ["logprob_mismatch"] + ALWAYS_PANELS[4:]  # the jax sampler returns log-probs
    check_offline_page(project.folder / "reports" / "tiny" / "report.html", panels)
    before = len(copy.read_bytes())
    second = project.tpuctl("report", "--name", "tiny")
    new_bytes = len(copy.read_bytes()) - before
    assert second.code == 0 and f": {new_bytes} new bytes" in fetched_line(second.out)
    assert metrics_file(project).read_bytes().startswith(copy.read_bytes())

    # Killed, then launched again: the trainer starts at step 0 and empties the file the copy came from.
    runner = int(project.vm.remote(0, "~/repo/logs/tiny_latest.pid").read_text())
    trainer = subprocess.run(["pgrep", "-P", str(runner)], capture_output=True, text=True).stdout.split()
    os.kill(int(trainer[0]), signal.SIGKILL)
    wait_for(lambda: project.vm.remote(0, "~/repo/logs/tiny_latest.exit").exists())
    assert project.tpuctl("launch", "--name", "tiny", "--", *CPU_TINY, "--set", "steps=3").code == 0

    shown = in_a_terminal(project, "tail", "--name", "tiny", "--until-exit", "--progress", "-n", "0")
    assert re.search(r"step 3/3 .*━.*100%", shown) and "step=2 loss=" in shown

    relaunched = project.tpuctl("report", "--name", "tiny")
    assert relaunched.code == 0 and "read again from its start" in fetched_line(relaunched.out)
    assert copy.read_bytes() == metrics_file(project).read_bytes()
    assert [r["step"] for r in records(copy.read_bytes()) if r["kind"] == "step"] == [0, 1, 2]
    assert ": 0 new bytes" in fetched_line(project.tpuctl("report", "--name", "tiny").out)

    progress = json.loads(project.tpuctl("status", "--name", "tiny", "--json").out)[0]["progress"]
    assert (progress["steps_done"], progress["total_steps"], progress["eta_s"]) == (3, 3, 0.0)
    piped = project.tpuctl("tail", "--name", "tiny", "--until-exit", "--progress", "-n", "5")
    assert piped.code == 0 and "step=2 loss=" in piped.out and "━" not in piped.out + piped.err

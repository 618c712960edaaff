"""Fault drills on real sshd workers: a worker that stops answering mid-tail, a run killed with its
runner, two launches racing for one name, and a pid that no longer means the run (a reboot, a
recycled pid, a corrupted pid file). Each has one expected outcome."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.tpuctl.helpers import exit_text, logs, run, tail_a_long_run, tpuctl_process
from tpuctl.ops.launch import LaunchPlan, launch_script
from tpuctl.pairs import fields

STEP = "step={} loss=0.000000 entropy=0.2363 reward_mean=0.1250 dt=0.0{}s"


def state(name: str = "train") -> str:
    return json.loads(run("status", "--json", "--name", name).out)[0]["state"]


def start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def test_tail_reconnects_when_the_worker_stops_answering(synced1):
    """The worker's sshd sessions are SIGSTOPped mid-tail and stay stopped: within ssh_timeout tail
    counts the silence as a dropped connection, reconnects, and shows every line once."""
    synced1.write_config(ssh_timeout=2)
    follower, results = tail_a_long_run(synced1, "0.1")
    time.sleep(0.5)  # tail is past its first reads
    stopped = synced1.workers[0].session_pids()
    assert stopped, "tail's session was not found"
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        follower.join(timeout=40)
        assert not follower.is_alive(), "tail hung on the stopped worker"
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    result = results["r"]
    assert result.code == 0, result.all
    assert "w0: connection lost" in result.err and "reconnecting" in result.err
    steps = [line for line in result.out.splitlines() if line.startswith("step=")]
    assert steps == [STEP.format(i, i) for i in range(60)]


def test_tail_until_exit_ends_on_a_run_killed_with_its_runner(synced1):
    """The whole process group is SIGKILLed, so no exit file is ever written: tail says vanished."""
    assert run("launch", "--", "bash", "-c", "echo started; sleep 1; kill -KILL 0").code == 0
    tail = tpuctl_process(synced1, "tail", "--until-exit", "-n", "10")
    try:
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert tail.returncode == 1, out + err
    assert "started" in out
    assert "run 'train' vanished: no process left and no exit file" in err
    assert state() == "vanished"


def test_two_launches_racing_for_one_name_start_exactly_one_run(synced1, tmp_path):
    """Both preflights pass at the same time (activating the venv takes a second); the lock lets one start."""
    venv = tmp_path / "slow-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("sleep 1\n")
    synced1.write_config(venv=str(venv))
    racers = [tpuctl_process(synced1, "launch", "--name", "dup", "--", "sleep", "60") for _ in range(2)]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    codes = sorted(racer.returncode for racer in racers)
    assert codes == [0, 2], outputs
    loser = outputs[[r.returncode for r in racers].index(2)]
    assert "launch refused" in loser[1] and "run 'dup' is still running" in loser[1]
    assert len(list(logs(synced1).glob("dup_[0-9]*.log"))) == 1
    assert len(runners_in(synced1.remote(0, "~/repo"))) == 1
    stopped = run("stop", "--name", "dup", "--grace", "5")
    assert stopped.code == 0 and "stopped (TERM)" in stopped.out
    assert exit_text(synced1, "dup") == "143"
    wait_for(lambda: not runners_in(synced1.remote(0, "~/repo")))


def runners_in(checkout: Path) -> list[int]:
    """Pids of the runners (`bash logs/NAME_STAMP.sh`) working in `checkout`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"bash\0logs/")
                    and Path(os.readlink(proc / "cwd")) == checkout.resolve()):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture
def dead_run(synced1):
    """A run killed with its whole group (no exit file), as after a crash of the host's processes."""
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "1000", "--sleep", "0.1").code == 0
    pid = int(wait_for(lambda: (logs(synced1) / "train_latest.pid").read_text().strip()))
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode == 1)
    assert state() == "vanished"
    return synced1


@pytest.fixture
def stranger():
    """An unrelated process that leads its own process group, as a later run or daemon would."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def _check_not_the_run(project, stranger) -> None:
    assert state() == "vanished"
    stopped = run("stop", "--grace", "1")
    assert stopped.code == 0 and "was not running" in stopped.out, stopped.all
    assert stranger.poll() is None  # never signalled
    assert run("launch", "--", "./fake_trainer.sh").code == 0  # the name is free
    assert exit_text(project) == "0"


def test_a_recycled_pid_is_never_taken_for_the_run(dead_run, stranger):
    """The run's pid now belongs to another process group: its start time is not the runner's."""
    (logs(dead_run) / "train_latest.pid").write_text(f"{stranger.pid}\n")
    _check_not_the_run(dead_run, stranger)


def test_after_a_reboot_the_recorded_pid_means_nothing(dead_run, stranger):
    """Another boot, where a process happens to have the run's pid and start time: the boot id differs."""
    base = logs(dead_run) / os.readlink(logs(dead_run) / "train_latest.log").removesuffix(".log")
    Path(f"{base}.pid").write_text(f"{stranger.pid}\n")
    Path(f"{base}.identity").write_text(f"00000000-0000-4000-8000-000000000000 {start_time(stranger.pid)}\n")
    _check_not_the_run(dead_run, stranger)


@pytest.mark.parametrize("pid_text", ["1", "0", "-1", "abc", "12 34"])
def test_a_pid_file_naming_no_single_process_is_never_trusted(dead_run, pid_text):
    (logs(dead_run) / "train_latest.pid").write_text(pid_text + "\n")
    assert state() == "vanished"
    stopped = run("stop", "--grace", "1")
    assert stopped.code == 0 and "was not running" in stopped.out, stopped.all


def test_stop_refuses_to_signal_a_live_run_whose_pid_file_was_corrupted(synced1):
    """The run lives (its lock is held) but its pid file says 1: nothing is signalled, exit 1."""
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "1000", "--sleep", "0.1").code == 0
    pid_file = logs(synced1) / "train_latest.pid"
    real = int(wait_for(lambda: pid_file.read_text().strip()))
    pid_file.write_text("1\n")
    stopped = run("stop", "--grace", "1")
    assert stopped.code == 1 and "NOT signalled" in stopped.out
    assert subprocess.run(["pgrep", "-g", str(real)], capture_output=True).returncode == 0  # still running
    refused = run("launch", "--", "./fake_trainer.sh")
    assert refused.code == 2 and "still running" in refused.err
    os.killpg(real, signal.SIGKILL)


def test_a_launch_with_the_same_stamp_never_overwrites_a_runs_files(synced1):
    """Two launches of one name in the same second (the first already done): the files are noclobber."""
    session, workers = synced1.session()
    plan = LaunchPlan("quick", "20250101T000000Z", ("bash", "-c", "echo first"))
    first = fields(session.exec(workers[0], launch_script(session.target, plan, 0, {}), "launch").out)
    assert first.get("pid"), first
    assert exit_text(synced1, "quick") == "0"
    log = logs(synced1) / "quick_20250101T000000Z.log"
    before = log.read_text()
    again = LaunchPlan("quick", "20250101T000000Z", ("bash", "-c", "echo second"))
    second = fields(session.exec(workers[0], launch_script(session.target, again, 0, {}), "launch").out)
    session.close()
    assert "the files of run logs/quick_20250101T000000Z exist already" in second.get("refused", ""), second
    time.sleep(0.5)
    assert log.read_text() == before and "first" in before

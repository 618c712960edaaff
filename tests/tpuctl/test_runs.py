"""`launch`, `status`, `tail`, `stop`: detached runs on real sshd workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.tpuctl.helpers import HF_TOKEN, WANDB_KEY, exit_text, logs, run
from tpuctl.ops.runs import utc_stamp
from tpuctl.ops.status import parse_status, status_script


def test_launch_writes_run_files_with_relative_latest_links(synced1):
    result = run("launch", "--name", "smoke", "--", "./fake_trainer.sh", "--steps", "2")
    assert result.code == 0, result.all
    assert exit_text(synced1, "smoke") == "0"
    folder = logs(synced1)
    for ext in ("log", "exit", "pid", "meta.json"):
        link = folder / f"smoke_latest.{ext}"
        assert link.is_symlink() and not os.readlink(link).startswith(("/", "logs/"))
        assert link.resolve().parent == folder.resolve()
    meta = json.loads((folder / "smoke_latest.meta.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder.parent, capture_output=True, text=True).stdout
    assert meta["command"] == ["./fake_trainer.sh", "--steps", "2"]
    assert meta["git_head"] == head.strip() and meta["name"] == "smoke" and meta["worker"] == 0
    assert "step=1 loss=0.000000" in (folder / "smoke_latest.log").read_text()


@pytest.mark.parametrize("args, expected", [((), "0"), (("--exit", "3"), "3")])
def test_exit_file_holds_the_command_exit_code(synced1, args, expected):
    assert run("launch", "--", "./fake_trainer.sh", *args).code == 0
    assert exit_text(synced1) == expected
    status = run("status", "--json")
    assert json.loads(status.out)[0]["state"] == "exited" and json.loads(status.out)[0]["exit_code"] == int(expected)


def test_killed_job_gets_exit_137_and_status_says_so(synced1):
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "100", "--sleep", "0.2").code == 0
    pid = int(wait_for(lambda: (logs(synced1) / "train_latest.pid").read_text().strip()))
    child = wait_for(lambda: subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split())
    os.kill(int(child[0]), signal.SIGKILL)
    assert exit_text(synced1) == "137"
    assert "exited 137" in run("status").out


def test_second_launch_of_a_running_name_is_refused(synced1):
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "100", "--sleep", "0.2").code == 0
    wait_for(lambda: (logs(synced1) / "train_latest.pid").exists())
    before = sorted(p.name for p in logs(synced1).iterdir())
    second = run("launch", "--", "./fake_trainer.sh")
    assert second.code == 2
    assert "run 'train' is still running" in second.err and "tpuctl stop --name train" in second.err
    assert sorted(p.name for p in logs(synced1).iterdir()) == before
    assert run("launch", "--name", "other", "--", "./fake_trainer.sh").code == 0  # other names are free
    assert run("stop", "--grace", "5").code == 0


def test_status_running_then_step_fields_then_vanished(synced1):
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "100", "--sleep", "0.2").code == 0
    wait_for(lambda: "step=1 " in (logs(synced1) / "train_latest.log").read_text())
    row = json.loads(run("status", "--json").out)[0]
    assert row["state"] == "running"
    assert row["step"]["loss"] == "0.000000" and row["step"]["entropy"] == "0.2363"
    assert row["step"]["reward_mean"] == "0.1250" and int(row["step"]["step"]) >= 1
    pid = row["pid"]
    os.killpg(pid, signal.SIGKILL)  # the whole run dies at once: nobody writes the exit file
    wait_for(lambda: json.loads(run("status", "--json").out)[0]["state"] == "vanished")
    assert json.loads(run("status", "--json", "--name", "never").out)[0]["state"] == "none"


def test_stop_terms_the_group_then_kills_what_ignores_term(synced1):
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "100", "--sleep", "0.2").code == 0
    wait_for(lambda: (logs(synced1) / "train_latest.pid").exists())
    stopped = run("stop", "--grace", "5")
    assert stopped.code == 0 and "stopped (TERM)" in stopped.out
    assert exit_text(synced1) == "143"
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "100", "--sleep", "0.2", "--ignore-term").code == 0
    wait_for(lambda: "step=0" in (logs(synced1) / "train_latest.log").read_text())
    killed = run("stop", "--grace", "0.5")
    assert killed.code == 0 and "killed (KILL after 0.5 s)" in killed.out
    assert exit_text(synced1) == "137"
    pid = int((logs(synced1) / "train_latest.pid").read_text())
    wait_for(lambda: subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode == 1)  # group gone


def test_secrets_reach_the_run_but_never_argv_or_output(synced1):
    synced1.write_env()
    outputs = [run("secrets", "push")]
    outputs.append(run("launch", "--", "./fake_trainer.sh", "--steps", "50", "--sleep", "0.1"))
    wait_for(lambda: "step=2" in (logs(synced1) / "train_latest.log").read_text())
    process_list = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    outputs += [run("status"), run("tail", "-n", "100"), run("stop", "--grace", "5"), run("launch", "--dry-run", "--", "x")]
    log = (logs(synced1) / "train_latest.log").read_text()
    assert "wandb key present: yes" in log
    for secret in (WANDB_KEY, HF_TOKEN):
        assert secret not in process_list
        assert secret not in log
        assert all(secret not in o.all for o in outputs)
        assert not any(secret in p.read_text() for p in logs(synced1).iterdir() if p.suffix in (".sh", ".json"))


def test_multi_worker_launch_sets_jax_distributed_variables(synced3):
    result = run("launch", "--", "bash", "-c", "echo coord=$JAX_COORDINATOR_ADDRESS n=$JAX_NUM_PROCESSES id=$JAX_PROCESS_ID")
    assert result.code == 0, result.all
    coordinator = f"{synced3.workers[0].address}:8476"
    for i in range(3):
        assert exit_text(synced3, index=i) == "0"
        log = (logs(synced3, i) / "train_latest.log").read_text()
        assert f"coord={coordinator} n=3 id={i}" in log


def test_lock_file_removed_only_when_no_process_holds_the_devices(synced1, tmp_path):
    """The real stop script, pointed at a stand-in device file that a live process holds open."""
    session, workers = synced1.session()
    device = tmp_path / "accel0"
    device.write_text("")
    lock = tmp_path / "libtpu_lockfile"
    lock.write_text("")
    from tpuctl.ops.stop import stop_script

    holder = subprocess.Popen(["bash", "-c", f"exec 3<{device}; sleep 30"])
    try:
        wait_for(lambda: any(os.readlink(f"/proc/{holder.pid}/fd/{fd}") == str(device)
                             for fd in os.listdir(f"/proc/{holder.pid}/fd")))
        script = stop_script(session.target, "train", 1, lockfile=str(lock), device_patterns=(str(device),))
        kept = session.exec(workers[0], script, "stop").out
        assert f"lock=kept (held by {holder.pid})" in kept and lock.exists()
    finally:
        holder.kill()
        holder.wait()
    removed = session.exec(workers[0], script, "stop").out
    assert "lock=removed" in removed and not lock.exists()
    session.close()


def test_one_dead_worker_among_three_is_reported_while_the_others_answer(synced3):
    assert run("launch", "--", "./fake_trainer.sh").code == 0
    for i in range(3):
        exit_text(synced3, index=i)
    synced3.workers[1].stop()
    result = run("status", "--json")
    assert result.code == 1
    rows = {row["worker"]: row for row in json.loads(result.out)}
    assert rows[0]["state"] == rows[2]["state"] == "exited"
    assert rows[1]["state"] == "unreachable" and "connection refused" in rows[1]["error"]
    table = run("status")
    assert table.code == 1 and "unreachable" in table.out and "w1 failed" in table.err
    assert table.out.count("exited 0") == 2


def test_status_script_parses_remote_output(synced1):
    session, workers = synced1.session()
    status = parse_status(session.exec(workers[0], status_script(session.target, "nothing"), "status").out)
    session.close()
    assert status.state == "none"


def test_leading_assignments_become_the_commands_environment(synced1):
    result = run("launch", "--", "STEPS=4", "GREETING=hello world", "bash", "-c", 'echo "$GREETING $STEPS"')
    assert result.code == 0, result.all
    assert exit_text(synced1) == "0"
    assert "hello world 4" in (logs(synced1) / "train_latest.log").read_text()
    refused = run("launch", "--name", "only-vars", "--", "A=1")
    assert refused.code == 2 and "no command to launch after the variable assignments 'A=1'" in refused.err


def test_status_shows_rich_markup_from_the_log_as_text(synced1):
    line = "step=1 loss=[/red] entropy=[bold]x reward_mean=0.1250 dt=0.01s"
    assert run("launch", "--", "echo", line).code == 0
    exit_text(synced1)
    result = run("status")
    assert result.code == 0, result.all
    assert "[/red]" in result.out and "[bold]x" in result.out


def test_the_lock_file_is_kept_when_not_every_process_can_be_seen(synced1, tmp_path):
    """As a user other than root, a root process holding the TPU is invisible: keep the lock file."""
    session, _ = synced1.session()
    device = tmp_path / "accel0"
    device.write_text("")
    shared = Path(tempfile.mkdtemp(prefix="tpuctl-lock-"))  # outside pytest's folder, which only root may enter
    shared.chmod(0o777)
    lock = shared / "libtpu_lockfile"
    lock.write_text("")
    lock.chmod(0o666)
    from tpuctl.ops.stop import stop_script

    script = stop_script(session.target, "train", 1, lockfile=str(lock), device_patterns=(str(device),))
    holder = subprocess.Popen(["bash", "-c", f"exec 3<{device}; sleep 30"])  # root holds the "TPU"
    try:
        wait_for(lambda: any(os.readlink(f"/proc/{holder.pid}/fd/{fd}") == str(device)
                             for fd in os.listdir(f"/proc/{holder.pid}/fd")))
        as_nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s"],
                                   input=script, capture_output=True, text=True, cwd="/")
    finally:
        holder.kill()
        holder.wait()
    kept = lock.exists()
    shutil.rmtree(shared)
    assert "lock=kept (cannot see every process's open files: not root)" in as_nobody.stdout, as_nobody
    assert kept


def test_run_stamps_of_launches_a_moment_apart_differ():
    """A stop and a launch at once (or two quick runs) must not meet the noclobber guard of one stamp."""
    first = utc_stamp()
    time.sleep(0.002)
    second = utc_stamp()
    assert first < second and len(first) == len("20250101T000000.000Z")

"""`tpuctl doctor [--kill]` against stand-in TPU devices (files that processes hold open) on a real sshd worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.helpers import wait_for
from tests.tpuctl.helpers import run
from tpuctl.cli import app
from tpuctl.ops.doctor import Holder, kill, look


def holds(pid: int, device) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(device) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


@pytest.fixture
def devices(tmp_path):
    """Two stand-in device files, a libtpu lock file, and the options that point doctor at them."""
    folder = tmp_path / "dev"
    folder.mkdir()
    for name in ("accel0", "accel1"):
        (folder / name).write_text("")
    lock = tmp_path / "libtpu_lockfile"
    lock.write_text("")
    return folder, lock, ["--device", f"{folder}/accel*", "--lock-file", str(lock)]


@pytest.fixture
def stray(devices):
    """A holder started outside tpuctl that ignores TERM, as a wedged process does (one process: no child
    that inherits the device and outlives it)."""
    folder, _, _ = devices
    code = (f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); held = open({str(folder / 'accel1')!r}); "
            "time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code])
    wait_for(lambda: holds(process.pid, folder / "accel1"))
    yield process
    process.kill()
    process.wait()


def test_doctor_lists_every_holder_and_kill_ends_them_then_removes_the_lock(synced1, devices, stray):
    folder, lock, options = devices
    assert run("launch", "--name", "hog", "--", "bash", "-c", f"exec 3<{folder}/accel0; sleep 300").code == 0
    ours = wait_for(lambda: next((int(p) for p in os.listdir("/proc") if p.isdigit() and holds(int(p), folder / "accel0")),
                                 None))
    listed = run("doctor", *options)
    assert listed.code == 0, listed.all
    rows = [line for line in listed.out.splitlines() if str(ours) in line or str(stray.pid) in line]
    assert len(rows) == 2
    assert "hog" in next(r for r in rows if str(ours) in r) and "sleep 300" in listed.out
    assert "root" in rows[0] and "signal.SIG_IGN" in listed.out
    assert "present" in listed.out and "held" in listed.out and lock.exists()

    declined = CliRunner().invoke(app, ["doctor", "--kill", *options], input="n\n")
    assert declined.exit_code == 1 and "nothing signalled" in declined.stdout
    assert stray.poll() is None and lock.exists()

    killed = run("doctor", "--kill", "--yes", "--grace", "1", *options)
    assert killed.code == 0, killed.all
    assert f"TERM {min(ours, stray.pid)}, {max(ours, stray.pid)}" in killed.out
    assert f"KILL {stray.pid}" in killed.out  # it ignored TERM
    assert "lock file removed" in killed.out and not lock.exists()
    assert stray.wait(timeout=10) == -9
    assert "nothing holds the TPU" in run("doctor", *options).out


def test_kill_never_signals_a_pid_that_is_no_longer_the_holder_it_was(synced1, devices, stray):
    """A recycled pid (same number, another start time) or a process that let go of the TPU is skipped."""
    folder, lock, _ = devices
    session, workers = synced1.session()
    try:
        patterns = (f"{folder}/accel*",)
        [seen] = look(session, session.target, workers, str(lock), patterns)
        holder = next(h for h in seen.value.holders if h.pid == stray.pid)
        recycled = Holder(holder.pid, holder.start + 1, holder.user, holder.age_s, "", holder.command)
        report = kill(session, session.target, workers[0], [recycled], 1, str(lock), patterns)
        assert report.terminated == [] and report.skipped == [f"{stray.pid} no longer the process that held the TPU"]
        assert report.lock_after.startswith("kept (held by") and stray.poll() is None
        forged = Holder(1, 0, "root", 0, "", "init")
        assert kill(session, session.target, workers[0], [forged], 1, str(lock), patterns).terminated == []
    finally:
        session.close()


def test_doctor_refuses_a_relative_device_path(project1):
    result = run("doctor", "--device", "accel*")
    assert result.code == 2 and "bad device or lock file 'accel*': expected an absolute path" in result.err

"""`tpuctl tail`: last lines, following by byte offset across a dropped connection, the run's exit code."""

from __future__ import annotations

import time

from tests.tpuctl.helpers import exit_text, run, tail_a_long_run
from tpuctl.ops.tail import LogFollower


def test_last_lines(project1):
    assert run("sync").code == 0
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "30").code == 0
    exit_text(project1)
    result = run("tail", "-n", "3")
    assert result.code == 0
    assert result.out.splitlines() == [f"step={i} loss=0.000000 entropy=0.2363 reward_mean=0.1250 dt=0.0{i}s"
                                       for i in (27, 28, 29)]


def test_until_exit_returns_the_runs_own_exit_code(project1):
    assert run("sync").code == 0
    # Slow enough that tail starts (with -n 0: at the log's end) before the last step, even on a busy machine.
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "5", "--sleep", "1", "--exit", "3").code == 0
    result = run("tail", "--until-exit", "-n", "0")
    assert result.code == 3
    assert "step=4 " in result.out


def test_follow_across_an_sshd_restart_has_no_gaps_or_repeats(project1):
    """The server (and every session it forked) dies mid-run; tail reconnects and resumes at its byte offset."""
    assert run("sync").code == 0
    follower, results = tail_a_long_run(project1, "0.05")
    project1.workers[0].stop()
    time.sleep(1.0)  # lines keep arriving while the worker is unreachable
    project1.workers[0].start()
    follower.join(timeout=60)
    result = results["r"]
    assert result.code == 0, result.all
    assert result.err.count("w0: connection lost") >= 1 and "reconnecting" in result.err
    steps = [line for line in result.out.splitlines() if line.startswith("step=")]
    assert steps == [f"step={i} loss=0.000000 entropy=0.2363 reward_mean=0.1250 dt=0.0{i}s" for i in range(60)]
    assert result.out.splitlines()[:3] == ["model_path: tiny", "rollout:", "  backend: sglang_jax"]


def test_several_workers_are_labelled(project3):
    assert run("sync").code == 0
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "2").code == 0
    for i in range(3):
        exit_text(project3, index=i)
    result = run("tail", "-n", "1", "--worker", "0,2")
    assert result.code == 0
    assert sorted(result.out.splitlines()) == [f"[w{i}] step=1 loss=0.000000 entropy=0.2363 reward_mean=0.1250 dt=0.01s"
                                               for i in (0, 2)]


def test_tail_of_a_missing_run_says_so(project1):
    assert run("sync").code == 0
    result = run("tail", "--name", "nothing")
    assert result.code == 1
    assert "no run named 'nothing'" in result.err


def test_a_log_replaced_and_regrown_past_the_offset_is_read_again_from_its_start(project1):
    """Truncated and rewritten between two polls, longer than before: no line of the new log is skipped."""
    assert run("sync").code == 0
    base = project1.remote(0, "~/repo/logs/manual_20250101T000000Z")
    base.parent.mkdir(parents=True)
    log = base.with_suffix(".log")
    log.write_text("old 1\nold 2\n")
    session, workers = project1.session()
    shown = []
    follower = LogFollower(session, workers[0], str(base), emit=shown.append, name="manual")
    follower.last_lines(10)
    assert shown == ["old 1", "old 2"]
    log.write_text("new 1\nnew 2\nnew 3\nnew 4\n")  # truncated, then rewritten past the old size
    base.with_suffix(".exit").write_text("0\n")
    assert follower.poll()
    session.close()
    assert shown == ["old 1", "old 2", "new 1", "new 2", "new 3", "new 4"]


def test_terminal_escape_sequences_in_the_log_are_shown_not_obeyed(project1):
    assert run("sync").code == 0
    title = "\x1b]0;owned\x07"
    assert run("launch", "--", "printf", f"\x1b[31mred\x1b[0m {title} \u202eevil\\n").code == 0
    exit_text(project1)
    result = run("tail", "-n", "5")
    assert result.code == 0
    assert "\x1b" not in result.out and "\x07" not in result.out and "\u202e" not in result.out
    assert "\\x1b[31mred\\x1b[0m \\x1b]0;owned\\x07 \\u202eevil" in result.out

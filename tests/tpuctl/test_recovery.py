"""babysit's decision table (tpuctl.ops.recovery.decide) and its memory, the events file (tpuctl.ops.events)."""

from __future__ import annotations

import json

import pytest

from tpuctl.ops import events
from tpuctl.ops.babysit import checkpoint_problem
from tpuctl.ops.recovery import Action, History, Limits, Observation, decide

LIMITS = Limits(max_preemptions=2, max_failures=0)


def ready(*runs: str, codes: tuple = (), run_id: str = "r1") -> Observation:
    return Observation("READY", "n1", "", runs, codes or (None,) * len(runs), run_id)


@pytest.mark.parametrize("seen, action", [
    (ready("none", "none"), Action.LAUNCH),
    (ready("running", "running"), Action.WATCH),
    (ready("exited", "running", codes=(0, None)), Action.WATCH),  # one host done first: the others go on
    (ready("exited", "exited", codes=(0, 0)), Action.SUCCEED),
    (ready("exited", "none", codes=(0, None)), Action.LAUNCH),
    (ready("running", "unreachable"), Action.WAIT),
    (ready("exited", "running", codes=(1, None)), Action.FAIL),
    (ready("vanished", "running"), Action.WAIT),  # a preemption the API may not report yet
    (Observation("CREATING", "n1"), Action.WAIT),
    (Observation("PREEMPTED", "n1"), Action.RECREATE),
    (Observation("TERMINATED", "n1"), Action.RECREATE),
    (Observation("ABSENT", "n1"), Action.RECREATE),  # a spot reclaim deletes the node
    (Observation("ABSENT", "n1", queued="WAITING_FOR_RESOURCES"), Action.WAIT),
    (Observation("ABSENT", "n1", queued="ACCEPTED"), Action.WAIT),
    (Observation("CREATING", "n2", queued="PROVISIONING"), Action.WAIT),
    (Observation("PREEMPTED", "n1", queued="SUSPENDED"), Action.RECREATE),
    (Observation("ABSENT", "n1", queued="FAILED"), Action.RECREATE),
    (Observation("STOPPED", "n1"), Action.GIVE_UP),
])
def test_one_action_per_observation(seen, action):
    assert decide(seen, History(), LIMITS).action == action


def test_a_failure_exits_with_the_runs_code_unless_retries_are_left():
    seen = ready("exited", "exited", codes=(0, 7))
    failed = decide(seen, History(), LIMITS)
    assert (failed.action, failed.exit_code, failed.counts_failure) == (Action.FAIL, 7, "r1")
    assert "worker 1: the run exited 7" in failed.reason
    retried = decide(seen, History(), Limits(max_failures=1))
    assert (retried.action, retried.counts_failure) == (Action.RELAUNCH, "r1")
    # After the retry the new run fails too: two failed runs, one retry allowed.
    again = decide(ready("exited", "exited", codes=(0, 7), run_id="r2"), History(failed_runs=frozenset({"r1"})),
                   Limits(max_failures=1))
    assert again.action == Action.FAIL and "--max-failures 1" in again.reason
    # A vanished run (no exit file) on a node still READY after the wait fails with 1.
    assert decide(ready("vanished"), History(suspect_s=LIMITS.suspect_wait_s), LIMITS).exit_code == 1


def test_preemptions_are_counted_by_node_so_a_restarted_babysit_does_not_count_one_twice():
    seen = Observation("PREEMPTED", "n3")
    assert decide(seen, History(preempted_nodes=frozenset({"n1", "n2"})), LIMITS).action == Action.GIVE_UP
    # The same node seen again (babysit restarted before its recreate finished): still preemption 2 of 2.
    recreate = decide(Observation("PREEMPTED", "n2"), History(preempted_nodes=frozenset({"n1", "n2"})), LIMITS)
    assert (recreate.action, recreate.counts_preemption) == (Action.RECREATE, "n2")
    assert "preemption 2 of at most 2" in recreate.reason
    assert decide(seen, History(), Limits(max_preemptions=0)).exit_code == 3


def test_an_unknown_run_state_is_refused():
    with pytest.raises(ValueError, match="runs: expected states among"):
        Observation("READY", runs=("finished",))


def test_the_events_file_round_trips_and_skips_a_torn_line(tmp_path):
    path = events.events_path("train", tmp_path)
    events.append(path, "goal", command=["python", "-m", "trainer"], node={"spot": True})
    events.append(path, "action", action=Action.RECREATE, reason="node PREEMPTED", preempted_node="n1")
    events.append(path, "launched", run_id="train_1")
    with open(path, "a") as handle:
        handle.write('{"time": "2026-01-01T00:00:00Z", "event": "obs')  # a crash mid-write
    read = events.read(path)
    assert [e["event"] for e in read] == ["goal", "action", "launched"]
    assert all(json.loads(line)["time"].endswith("Z") for line in path.read_text().splitlines()[:3])
    assert events.history(read) == History(preempted_nodes=frozenset({"n1"}))
    assert events.read(tmp_path / "missing.jsonl") == []


def test_the_summary_counts_restarts_and_the_time_each_preemption_cost():
    def at(second: int, event: str, **fields) -> dict:
        return {"time": f"2026-01-01T00:00:{second:02d}.000000Z", "event": event, **fields}

    timeline = [at(0, "goal", command=["x"]), at(1, "launched", run_id="a"),
                at(10, "action", action="recreate", preempted_node="n1"), at(25, "launched", run_id="b"),
                at(30, "action", action="relaunch", failed_run="b"), at(32, "launched", run_id="c"),
                at(40, "action", action="recreate", preempted_node="n2"), at(47, "launched", run_id="d"),
                at(59, "done", result="succeed", exit_code=0)]
    summary = events.summarize(timeline)
    assert (summary.launches, summary.restarts, summary.preemptions, summary.failures) == (4, 3, 2, 1)
    assert summary.lost_s == [15.0, 7.0]
    assert (summary.result, summary.exit_code, summary.command) == ("succeed", 0, ["x"])


@pytest.mark.parametrize("command", [
    ["python", "-m", "trainer", "--set", "checkpoint.dir=gs://bucket/run1"],
    ["trainer", "--preset", "smoke", "--set=checkpoint.dir=gs://bucket/run1"],
    ["WANDB_MODE=online", "/opt/venv/bin/trainer", "--set", "checkpoint.dir=/tmp/x", "--set", "checkpoint.dir=gs://b/r"],
    ["bash", "train.sh"],  # not the trainer: its storage is its own business
])
def test_a_durable_checkpoint_dir_or_another_program_is_accepted(command):
    assert checkpoint_problem(command) is None


@pytest.mark.parametrize("command, received", [
    (["python", "-m", "trainer", "--preset", "smoke"], "nothing (the default, <out_dir>/checkpoints on the VM's disk)"),
    (["trainer", "--set", "checkpoint.dir=/data/ckpt"], "'/data/ckpt'"),
    (["STEPS=9", "python3", "-m", "trainer", "--set", "checkpoint.dir=gs://b/r", "--set", "checkpoint.dir=runs/c"],
     "'runs/c'"),  # the last --set wins, as in the trainer
    (["trainer", "--set", "checkpoint.dir=gs://"], "'gs://'"),
])
def test_a_trainer_checkpointing_to_the_vms_disk_is_refused_naming_the_setting(command, received):
    problem = checkpoint_problem(command)
    assert problem == (f"checkpoint.dir: expected a gs:// bucket that outlives the VM (a recreated VM has a fresh disk), "
                       f"received {received}: add --set checkpoint.dir=gs://BUCKET/PATH to the command")


def test_a_preempted_trainers_exit_143_on_a_still_ready_node_waits_before_it_counts_as_a_failure():
    # A spot preemption TERMs the trainer (it checkpoints, exits 143) while the API still says READY.
    seen = ready("exited", "exited", codes=(143, 143))
    assert decide(seen, History(), LIMITS).action == Action.WAIT
    assert decide(ready("vanished", "running"), History(suspect_s=10.0), LIMITS).action == Action.WAIT
    # The same node still READY after the window: a real failure, with the run's code.
    late = decide(seen, History(suspect_s=LIMITS.suspect_wait_s), LIMITS)
    assert (late.action, late.exit_code, late.counts_failure) == (Action.FAIL, 143, "r1")
    # Another code beside a 143 is a failure at once.
    assert decide(ready("exited", "exited", codes=(143, 1)), History(), LIMITS).action == Action.FAIL


def test_a_worker_unreachable_on_a_ready_node_ends_babysit_after_the_bound_naming_the_error():
    seen = Observation("READY", "n1", "", ("running", "unreachable"), (None, None), "r1",
                       errors=("worker 1: host key of 10.0.0.3 unknown",))
    assert decide(seen, History(unreachable_s=60.0), LIMITS).action == Action.WAIT
    ended = decide(seen, History(unreachable_s=LIMITS.unreachable_wait_s), LIMITS)
    assert (ended.action, ended.exit_code) == (Action.FAIL, 1)
    assert "worker 1: host key of 10.0.0.3 unknown" in ended.reason
    assert ended.streak == "unreachable" and decide(seen, History(), LIMITS).streak == "unreachable"


def test_the_summary_counts_each_preempted_node_once_and_only_launches_that_started():
    def at(second: int, event: str, **fields) -> dict:
        return {"time": f"2026-01-01T00:00:{second:02d}.000000Z", "event": event, **fields}

    timeline = [at(0, "goal", command=["x"]), at(1, "launched", run_id="a"),
                at(10, "action", action="recreate", preempted_node="n1"), at(12, "error", error="recreate refused"),
                at(14, "action", action="recreate", preempted_node="n1"),  # the same preemption, tried again
                at(20, "launched", run_id="b"), at(21, "prepare-failed", step="launch: busy", run_id="b"),
                at(30, "launched", run_id="c"),
                at(59, "done", result="succeed", exit_code=0)]
    summary = events.summarize(timeline)
    assert (summary.launches, summary.restarts, summary.preemptions) == (2, 1, 1)
    assert summary.lost_s == [20.0]  # seen preempted at 10, the run that started launched at 30

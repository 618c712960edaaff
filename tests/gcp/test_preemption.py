"""`status` joins each run with the node's state: a run that vanished on a preempted node was preempted."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.tpuctl.helpers import run


def kill_run(pod, index: int, name: str, wait: bool = True) -> None:
    """The VM loses the run at once, as when the cloud takes it back: no exit file is written."""
    pid = int(pod.remote(index, f"~/repo/logs/{name}_latest.pid").read_text())
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not wait:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"run {pid} survived SIGKILL")


def states(result) -> list[str]:
    return [row["state"] for row in json.loads(result.out)]


@pytest.fixture
def running_pod(make_pod):
    pod = make_pod(2, accelerator_type="v4-16")
    assert run("sync").code == 0
    assert run("launch", "--name", "long", "--", "sleep", "60").code == 0
    yield pod
    for index in range(2):  # the runs outlive their sshd (setsid): end them with the test
        kill_run(pod, index, "long", wait=False)


def test_vanished_on_a_ready_node_is_a_crash_and_on_a_preempted_one_a_preemption(running_pod):
    pod = running_pod
    for index in range(2):
        kill_run(pod, index, "long")
    crashed = run("status", "--name", "long", "--json")
    assert crashed.code == 0 and states(crashed) == ["vanished", "vanished"]
    pod.api.set_state(pod.name, "PREEMPTED")
    preempted = run("status", "--name", "long", "--json")
    assert preempted.code == 0, preempted.all
    assert states(preempted) == ["preempted", "preempted"]
    assert run("status", "--name", "long").code == 0  # the table, too, counts a preemption as no failure


def test_unreachable_workers_of_a_terminated_node_are_preempted_too(running_pod):
    pod = running_pod
    kill_run(pod, 0, "long")
    pod.workers[1].stop()  # the VM itself is gone
    pod.api.set_state(pod.name, "TERMINATED")
    result = run("status", "--name", "long", "--json")
    assert result.code == 0, result.all
    assert states(result) == ["preempted", "preempted"]


def test_a_run_that_ended_on_its_own_keeps_its_exit_code(running_pod):
    pod = running_pod
    assert run("stop", "--name", "long", "--grace", "5").code == 0
    pod.api.set_state(pod.name, "PREEMPTED")
    result = run("status", "--name", "long", "--json")
    assert result.code == 0
    assert states(result) == ["exited", "exited"]


def test_the_api_is_asked_only_when_something_vanished(running_pod):
    pod = running_pod
    before = len(pod.api.requests)
    assert states(run("status", "--name", "long", "--json")) == ["running", "running"]
    asked = [r.path for r in pod.api.requests[before:]]
    # Discovery reads the node and its guest attributes once; no second look at the node's state.
    assert asked == [pod.node_path, pod.node_path + ":getGuestAttributes"]


def test_a_preempted_node_that_lists_no_workers_says_so(make_pod):
    pod = make_pod(1)
    pod.api.set_state(pod.name, "PREEMPTED")
    pod.api.set_endpoints(pod.name, [])  # what the API may show once the VMs are gone
    result = run("status")
    assert result.code == 1
    assert result.err.strip() == ("error: TPU 'pod' (sim-project/us-central2-b) is PREEMPTED and lists no workers; "
                                  "recreate it: tpuctl down --yes, then tpuctl up")

"""Every SOP command works through discovery (a target with a TPU name and no hosts) as with explicit hosts."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.helpers import git
from tests.tpuctl.helpers import WANDB_KEY, exit_text, run


def test_one_worker_sync_launch_status_stop(make_pod):
    pod = make_pod(1)
    synced = run("sync")
    assert synced.code == 0, synced.all
    assert git("rev-parse", "HEAD", cwd=pod.remote(0, "~/repo")) == git("rev-parse", "HEAD", cwd=pod.origin)
    assert f"w0 {pod.workers[0].address}:{pod.workers[0].port}" in synced.out
    launched = run("launch", "--name", "one", "--", "sleep", "30")
    assert launched.code == 0, launched.all
    meta = json.loads(pod.remote(0, "~/repo/logs/one_latest.meta.json").read_text())
    assert "distributed" not in meta  # one host: no jax.distributed settings
    rows = json.loads(run("status", "--name", "one", "--json").out)
    assert [(r["worker"], r["state"]) for r in rows] == [(0, "running")]
    stopped = run("stop", "--name", "one", "--grace", "5")
    assert stopped.code == 0, stopped.all
    assert "stopped (TERM)" in stopped.out
    assert json.loads(run("status", "--name", "one", "--json").out)[0]["state"] == "exited"


def test_three_workers_sync_launch_status_tail(make_pod):
    pod = make_pod(3, accelerator_type="v4-24", internal_prefix="10.130.0.")
    synced = run("sync")
    assert synced.code == 0, synced.all
    head = git("rev-parse", "HEAD", cwd=pod.origin)
    assert synced.out.count(head[:7]) == 4  # three workers and the summary line
    launched = run("launch", "--name", "pod", "--", "./fake_trainer.sh", "--steps", "2")
    assert launched.code == 0, launched.all
    for index in range(3):
        assert exit_text(pod, "pod", index) == "0"
    # The coordinator is worker 0's INTERNAL address, although SSH went to the external ones.
    meta = json.loads(pod.remote(2, "~/repo/logs/pod_latest.meta.json").read_text())
    assert meta["distributed"] == {"JAX_COORDINATOR_ADDRESS": "10.130.0.2:8476", "JAX_NUM_PROCESSES": "3",
                                   "JAX_PROCESS_ID": "2"}
    status = run("status", "--name", "pod", "--json")
    assert status.code == 0, status.all
    rows = json.loads(status.out)
    assert [(r["worker"], r["state"], r["exit_code"]) for r in rows] == [(i, "exited", 0) for i in range(3)]
    assert [r["address"] for r in rows] == [f"{w.address}:{w.port}" for w in pod.workers]
    assert rows[1]["step"]["step"] == "1"
    tail = run("tail", "--name", "pod", "-n", "1")
    assert tail.code == 0, tail.all
    assert all(f"[w{i}] step=1 loss=0.000000" in tail.out for i in range(3))


def test_secrets_reach_every_discovered_worker(make_pod):
    pod = make_pod(3, accelerator_type="v4-24")
    env = pod.folder / ".env"
    env.write_text(f"WANDB_API_KEY={WANDB_KEY}\n")
    pushed = run("secrets", "push")
    assert pushed.code == 0, pushed.all
    for index in range(3):
        remote = pod.remote(index, "~/.env")
        assert remote.read_text() == env.read_text() and remote.stat().st_mode & 0o777 == 0o600
    assert WANDB_KEY not in pushed.all


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="verify-env probes jax on the worker")
def test_smoke_runs_the_whole_sop_through_discovery(make_pod):
    pod = make_pod(1)
    pod.write_config(venv=sys.prefix, expect_backend="cpu", expect_versions={},
                     smoke_command="./fake_trainer.sh --steps 1")
    (pod.folder / ".env").write_text(f"WANDB_API_KEY={WANDB_KEY}\n")
    result = run("smoke")
    assert result.code == 0, result.all
    assert "SMOKE PASSED" in result.out
    assert pod.remote(0, "~/repo/logs/smoke_latest.exit").read_text().strip() == "0"


def test_addresses_external_by_default_internal_on_request(make_pod):
    pod = make_pod(2, accelerator_type="v4-16", internal_prefix="10.130.0.")
    port = pod.workers[0].port
    external = run("sync", "--dry-run")
    assert external.code == 0, external.all
    for index, worker in enumerate(pod.workers):
        assert f"# worker {index}: ssh -p {port} root@{worker.address}" in external.out
    internal = run("--internal-ip", "sync", "--dry-run")
    assert internal.code == 0, internal.all
    for index in range(2):
        assert f"# worker {index}: ssh -p {port} root@10.130.0.{index + 2}" in internal.out
    assert pod.api.changes() == []


def test_the_worker_count_is_the_number_of_endpoints(make_pod):
    make_pod(3, accelerator_type="v4-24")
    result = run("sync", "--worker", "3", "--dry-run")
    assert result.code == 2
    assert "worker 3 is out of range: the target has 3 worker(s), 0-2" in result.err


def test_a_preempted_node_is_refused_with_what_to_do(make_pod):
    pod = make_pod(1)
    pod.api.set_state(pod.name, "PREEMPTED")
    result = run("sync")
    assert result.code == 1
    assert "TPU 'pod' (sim-project/us-central2-b) is PREEMPTED: its workers cannot be used; recreate it" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not pod.remote(0, "~/repo").exists()

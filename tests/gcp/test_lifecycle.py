"""`up`, `down`, `list`, `describe`, `add-ssh-key` against the fake TPU API, whose nodes are real sshd workers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.tpuctl.helpers import HEAVY, run, startup_imports
from tpuctl.cli import app
from tpuctl.sim.fake_tpu_api import DEFAULT_RUNTIMES

RUNTIME = DEFAULT_RUNTIMES[0]
LABEL = "TPU 'pod' (sim-project/us-central2-b)"


def requests(pod) -> list[tuple[str, str]]:
    return [(r.method, r.path.removeprefix(f"projects/{pod.api.project}/locations/{pod.api.zones[0]}/"))
            for r in pod.api.changes()]


def test_up_waits_for_ready_prints_workers_and_down_deletes(make_pod):
    pod = make_pod(2, node=False)
    pod.provide_workers()
    pod.api.polls_per_step = 3
    up = run("up", "-a", "v4-16", "--runtime-version", RUNTIME, "--spot", "--label", "team=rl")
    assert up.code == 0, up.all
    assert f"creating {LABEL}: CREATING after" in up.out and f"creating {LABEL}: READY after" in up.out
    assert "w0" in up.out and "w1" in up.out
    assert f"pinned the host keys of 2 worker(s) of {LABEL}" in up.err
    node = pod.api.node(pod.name)
    assert (node.accelerator_type, node.runtime_version, node.scheduling_config.spot) == ("v4-16", RUNTIME, True)
    assert dict(node.labels) == {"team": "rl"} and node.network_config.enable_external_ips
    assert requests(pod) == [("POST", "nodes")]
    assert run("sync").code == 0  # the new VM is usable at once: its keys are pinned
    described = json.loads(run("describe", "--json").out)["node"]
    assert (described["state"], described["health"], described["scheduling"]) == ("READY", "HEALTHY", "spot")
    assert [(w["external_ip"], w["host_keys"]) for w in described["workers"]] == [
        (w.address, [w.fingerprint]) for w in pod.workers]
    listed = json.loads(run("list", "--json").out)
    assert [(n["name"], n["state"], len(n["workers"])) for n in listed["nodes"]] == [("pod", "READY", 2)]
    down = run("down", "--yes")
    assert down.code == 0, down.all
    assert f"deleted {LABEL}" in down.out
    assert not pod.api.has_node(pod.name) and pod.pins() == {}
    assert requests(pod) == [("POST", "nodes"), ("DELETE", "nodes/pod")]


def test_queued_resource_is_followed_to_active_then_deleted_with_its_node(make_pod):
    pod = make_pod(1, node=False)
    pod.provide_workers()
    up = run("up", "--queued", "--spot", "-a", "v4-8", "--runtime-version", RUNTIME)
    assert up.code == 0, up.all
    for state in ("ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE, node READY"):
        assert f"creating {LABEL}: {state} after" in up.out
    created = next(r for r in pod.api.changes() if r.path.endswith("queuedResources"))
    assert created.query["queuedResourceId"] == ["pod"] and created.body["spot"] == {}
    assert pod.api.node(pod.name).queued_resource.endswith("/queuedResources/pod")
    listed = json.loads(run("list", "--json").out)
    assert [(q["name"], q["state"], q["nodes"], q["spot"]) for q in listed["queued_resources"]] == [
        ("pod", "ACTIVE", ["pod"], True)]
    assert json.loads(run("describe", "--json").out)["node"]["queued_resource"] == "pod"
    assert run("sync").code == 0
    down = run("down", "--yes")
    assert down.code == 0, down.all
    deleted = pod.api.changes()[-1]
    assert (deleted.method, deleted.path.rsplit("/", 1)[1], deleted.query["force"]) == ("DELETE", "pod", ["true"])
    assert not pod.api.has_node(pod.name) and not pod.api.has_queued_resource(pod.name)


def test_down_asks_first_and_declining_changes_nothing(make_pod):
    pod = make_pod(1)
    result = CliRunner().invoke(app, ["down"], input="n\n")
    assert result.exit_code == 1
    assert f"Delete {LABEL}: v4-8, 1 worker(s), READY?" in result.stdout and "nothing deleted" in result.stdout
    assert pod.api.changes() == [] and pod.api.has_node(pod.name)


def test_up_with_add_ssh_key_puts_the_key_where_the_guest_agent_reads_it(make_pod):
    pod = make_pod(1, node=False, authorized=False)
    pod.provide_workers()
    pod.run_guest_agent()
    up = run("up", "-a", "v4-8", "--runtime-version", RUNTIME, "--add-ssh-key")
    assert up.code == 0, up.all
    kind, blob = pod.identity.with_suffix(".pub").read_text().split()[:2]
    assert pod.api.node(pod.name).metadata["ssh-keys"] == f"root:{kind} {blob} root"
    assert run("sync").code == 0


def test_add_ssh_key_adds_a_missing_key_once_and_keeps_the_others(make_pod):
    alice = "alice:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm2ukDrNLmnh6QKFWTVlnOcyZ9U2AbVRG1nBKTSA2mV alice"
    pod = make_pod(1, authorized=False, metadata={"ssh-keys": alice})
    pod.run_guest_agent()
    denied = run("sync")
    assert denied.code == 1 and "authentication failed" in denied.err
    added = run("add-ssh-key")
    assert added.code == 0, added.all
    assert f"{LABEL} added the SSH key of 'root' in its metadata" in added.out
    kind, blob = pod.identity.with_suffix(".pub").read_text().split()[:2]
    assert pod.api.node(pod.name).metadata["ssh-keys"] == f"{alice}\nroot:{kind} {blob} root"
    assert run("sync").code == 0
    again = run("add-ssh-key")
    assert again.code == 0 and "already had the SSH key" in again.out
    assert [r.method for r in pod.api.changes()] == ["PATCH"]


@pytest.mark.parametrize("command", ["up", "down", "list", "describe", "add-ssh-key", "forget-keys"])
def test_help_of_the_tpu_commands_imports_nothing_heavy(command):
    out, modules = startup_imports([command, "--help"])
    assert "Usage" in out
    assert not set(HEAVY) & set(modules)

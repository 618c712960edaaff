"""The simulated spot VM itself, through the real google-cloud-tpu client: what babysit's tests rely on."""

from __future__ import annotations

import socket

import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import tpu_v2

from tpuctl.sim.vm import SimTpuVm


@pytest.fixture
def spot_vm(tmp_path):
    with SimTpuVm(tmp_path / "vm", workers=2, name="spot", accelerator_type="v4-16", spot=True) as vm:
        client = tpu_v2.TpuClient(transport="rest", credentials=AnonymousCredentials(),
                                  client_options=ClientOptions(api_endpoint=vm.api.endpoint))
        yield vm, client


def answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def host_keys(client: tpu_v2.TpuClient, path: str) -> list[str]:
    attributes = client.get_guest_attributes(tpu_v2.GetGuestAttributesRequest(name=path, query_path="hostkeys/"))
    return [item.value for attribute in attributes.guest_attributes for item in attribute.query_value.items]


def test_preempted_then_created_again_with_a_new_id_new_host_keys_and_empty_disks(spot_vm):
    vm, client = spot_vm
    path = client.node_path(vm.api.project, vm.api.zones[0], vm.name)
    before = client.get_node(name=path)
    keys_before = host_keys(client, path)
    (vm.remote(0, "~/on-the-old-disk")).write_text("x")
    vm.api.preempt(vm.name)
    preempted = client.get_node(name=path)
    assert preempted.state == tpu_v2.Node.State.PREEMPTED and preempted.symptoms[0].details
    assert not any(answers(address, vm.port) for address in vm.addresses)

    client.delete_node(name=path).result(timeout=30)
    spec = tpu_v2.Node(accelerator_type=before.accelerator_type, runtime_version=before.runtime_version,
                       scheduling_config=before.scheduling_config, labels={"run": "x"})
    created = client.create_node(parent=path.rsplit("/nodes/", 1)[0], node_id=vm.name, node=spec).result(timeout=30)
    assert created.state == tpu_v2.Node.State.READY and created.id != before.id
    assert created.scheduling_config.spot and len(created.network_endpoints) == 2
    keys_after = host_keys(client, path)
    assert len(keys_after) == 2 and not set(keys_after) & set(keys_before)
    assert all(answers(address, vm.port) for address in vm.addresses)
    assert not vm.remote(0, "~/on-the-old-disk").exists()


def test_a_reclaimed_node_is_gone(spot_vm):
    vm, client = spot_vm
    vm.api.preempt(vm.name, reclaim=True)
    with pytest.raises(gexc.NotFound):
        client.get_node(name=client.node_path(vm.api.project, vm.api.zones[0], vm.name))


def test_a_queued_resource_waits_for_capacity_and_is_suspended_by_a_preemption(spot_vm):
    vm, client = spot_vm
    vm.api.queue_wait_polls = 3
    parent = f"projects/{vm.api.project}/locations/{vm.api.zones[0]}"
    spec = tpu_v2.QueuedResource.Tpu.NodeSpec(parent=parent, node_id="queued", node=tpu_v2.Node(
        accelerator_type="v4-8", runtime_version=vm.api.runtimes[0]))
    client.create_queued_resource(parent=parent, queued_resource_id="queued", queued_resource=tpu_v2.QueuedResource(
        tpu=tpu_v2.QueuedResource.Tpu(node_spec=[spec]), spot=tpu_v2.QueuedResource.Spot())).result(timeout=30)
    name = f"{parent}/queuedResources/queued"
    seen = [client.get_queued_resource(name=name).state.state.name for _ in range(8)]
    assert seen[:5] == ["ACCEPTED", "WAITING_FOR_RESOURCES", "WAITING_FOR_RESOURCES", "WAITING_FOR_RESOURCES",
                        "WAITING_FOR_RESOURCES"]
    assert seen[-1] == "ACTIVE"
    vm.api.preempt("queued")
    assert client.get_queued_resource(name=name).state.state.name == "SUSPENDED"
    assert client.get_node(name=f"{parent}/nodes/queued").state == tpu_v2.Node.State.PREEMPTED

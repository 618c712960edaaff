"""Fixtures of the TPU API tests: the fake TPU API, and pods whose workers are real sshd servers sharing one SSH port."""

from __future__ import annotations

import os

import pytest

from tests.gcp.helpers import NODE, Pod
from tests.helpers import next_address
from tpuctl.sim.fake_tpu_api import FakeTpuApi
from tpuctl.sim.sshd import SshdWorker, free_port_on


@pytest.fixture
def fake_api():
    with FakeTpuApi() as api:
        yield api


@pytest.fixture
def start_pod_workers(tmp_path, client_key):
    """start(n, authorized=True) -> n sshd workers at distinct loopback addresses, all on one port."""
    started: list[SshdWorker] = []

    def start(count: int, authorized: bool = True) -> list[SshdWorker]:
        addresses = [next_address() for _ in range(count)]
        port = free_port_on(addresses)
        keys = client_key.with_suffix(".pub").read_text() if authorized else ""
        for address in addresses:
            root = tmp_path / f"pod-worker{len(started)}"
            started.append(SshdWorker(root, address, keys, port=port).start())
        return started[-count:]

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def make_pod(request, tmp_path, fake_api, start_pod_workers, client_key, monkeypatch):
    """make_pod(n, node=True, authorized=True, **add_node_kwargs) -> a Pod; with node, the API lists it READY.

    With no workers (n=0) nothing is ever synced, so no git origin is made either.
    """

    def make(count: int, node: bool = True, authorized: bool = True, **node_kwargs) -> Pod:
        folder = tmp_path / "project"
        folder.mkdir()
        monkeypatch.chdir(folder)
        for name in [n for n in os.environ if n.startswith("TPUCTL_")]:
            monkeypatch.delenv(name)
        pin_file = tmp_path / "state" / "known_tpus.json"
        monkeypatch.setenv("TPUCTL_KNOWN_TPUS", str(pin_file))
        workers = start_pod_workers(count, authorized) if count else []
        origin = request.getfixturevalue("origin") if count else tmp_path / "origin.git"
        pod = Pod(folder, fake_api, workers, origin, client_key, pin_file)
        if node:
            fake_api.add_node(NODE, pod.endpoints(node_kwargs.pop("internal_prefix", "")), **node_kwargs)
        pod.write_config()
        return pod

    return make

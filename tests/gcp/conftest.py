"""A simulated TPU VM: the fake TPU API, whose node points at real sshd workers sharing one SSH port."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomlkit

from tests.conftest import next_address
from tpuctl.sim.fake_tpu_api import FakeTpuApi, SimEndpoint, authorized_keys_for
from tpuctl.sim.sshd import SshdWorker, free_port_on

NODE = "pod"


@dataclass
class Pod:
    """A project folder whose target names a TPU VM (no hosts), the fake API, and the VM's workers."""

    folder: Path
    api: FakeTpuApi
    workers: list[SshdWorker]
    origin: Path
    identity: Path
    pin_file: Path
    name: str = NODE

    def endpoints(self, internal_prefix: str = "") -> list[SimEndpoint]:
        """One endpoint per worker; with `internal_prefix`, internal IPs differ from the (reachable) external ones."""
        return [SimEndpoint.of_sshd(w, internal_ip=f"{internal_prefix}{i + 2}" if internal_prefix else "")
                for i, w in enumerate(self.workers)]

    def target_table(self) -> dict:
        return {"name": self.name, "project": self.api.project, "zone": self.api.zones[0],
                "identity_file": str(self.identity), "repo_url": str(self.origin), "repo_path": "~/repo",
                "branch": "main", "env_file": "~/.env", "ssh_port": self.workers[0].port if self.workers else 22,
                "tpu_api_endpoint": self.api.endpoint}

    def write_config(self, **changes) -> None:
        table = {**self.target_table(), **changes}
        (self.folder / "tpuctl.toml").write_text(tomlkit.dumps({"targets": {"tpu": table}}))

    def remote(self, index: int, path: str) -> Path:
        return self.workers[index].home / path.removeprefix("~/")

    def pins(self) -> dict:
        return json.loads(self.pin_file.read_text())["nodes"] if self.pin_file.exists() else {}

    def provide_workers(self) -> None:
        """Nodes created through the API get this pod's workers, as if the cloud handed out these VMs."""
        self.api.provision = lambda name, accelerator_type: self.endpoints()

    def run_guest_agent(self) -> None:
        """Keep the workers' authorized keys in step with the node's ssh-keys metadata, as a TPU VM's agent does."""
        def apply(name: str, metadata: dict[str, str]) -> None:
            if name == self.name:
                for worker in self.workers:
                    (worker.root / "authorized_keys").write_text(authorized_keys_for(metadata, "root"))

        self.api.on_metadata = apply

    @property
    def node_id(self) -> str:
        return str(self.api.node(self.name).id)

    @property
    def node_path(self) -> str:
        return f"projects/{self.api.project}/locations/{self.api.zones[0]}/nodes/{self.name}"


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

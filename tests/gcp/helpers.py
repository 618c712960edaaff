"""Helpers of the TPU API tests: a simulated TPU VM, the fake TPU API whose node points at real sshd workers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from tpuctl.sim.fake_tpu_api import FakeTpuApi, SimEndpoint, authorized_keys_for
from tpuctl.sim.sshd import SshdWorker

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

"""A simulated TPU VM (or pod slice) built from real parts, shared by the tests, benchmarks and demo.

- its workers are real sshd servers at 127.0.0.2, 127.0.0.3, ... sharing one SSH port (as every
  TPU worker listens on 22), each with its own host key and home folder;
- the fake TPU API (real REST wire protocol) lists the node: its network endpoints point at the
  workers and its guest attributes publish their host keys, so discovery and host-key pinning run
  exactly as against Google;
- the repository the VM syncs from is a local bare git origin;
- with `conda_envs`, each worker has the conda stand-in of tpuctl.sim.conda, as the SOP's VM has
  conda (env `mllm-jax`);
- `spot=True` makes it a spot VM: the API's `preempt(name)` powers its workers off (their sshd and
  every process started through them), and a node created
  again through the API (same name) gets new workers at the same addresses with new host keys and
  empty home folders, as a recreated VM has a fresh boot disk. Paths outside the homes (the Python
  environment the target names, a model folder) stand in for what the VM image provides.

Workers stay on loopback addresses in one network namespace: JAX's CPU collectives (gloo) advertise
the address the hostname resolves to, which another namespace could not reach.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from tpuctl.sim.conda import install_conda
from tpuctl.sim.fake_tpu_api import FakeTpuApi, SimEndpoint
from tpuctl.sim.sshd import SshdWorker, free_port_on, keygen

FIRST_ADDRESS = 2  # 127.0.0.2 is worker 0


@dataclass
class SimTpuVm:
    """`with SimTpuVm(root, workers=2) as vm:` starts the workers and the API; leaving stops both."""

    root: Path
    workers: int = 1
    name: str = "sim-tpu"
    accelerator_type: str = "v4-8"
    conda_envs: dict[str, Path] = field(default_factory=dict)  # env name -> the venv it activates
    spot: bool = False
    sshd: list[SshdWorker] = field(default_factory=list)
    generation: int = 0  # how many times the VM was created again

    def __enter__(self) -> SimTpuVm:
        self.root.mkdir(parents=True, exist_ok=True)
        self.identity = self.root / "id_ed25519"
        if not self.identity.exists():
            keygen(self.identity, comment="tpuctl-sim-client")
        self.addresses = [f"127.0.0.{FIRST_ADDRESS + i}" for i in range(self.workers)]
        self.port = free_port_on(self.addresses)
        try:
            self._start_workers()
            self.api = FakeTpuApi().start()
        except BaseException:
            self.__exit__()
            raise
        if self.spot:
            self.api.on_preempt = self._stop_workers
            self.api.provision = self._provision
        self.api.add_node(self.name, self._endpoints(), accelerator_type=self.accelerator_type, spot=self.spot)
        return self

    def _start_workers(self) -> None:
        """Workers with fresh host keys and homes: under worker<i> at first, worker<i>.<generation> later."""
        authorized = self.identity.with_suffix(".pub").read_text()
        suffix = f".{self.generation}" if self.generation else ""
        for i, address in enumerate(self.addresses):
            self.sshd.append(SshdWorker(self.root / f"worker{i}{suffix}", address, authorized, port=self.port).start())
            if self.conda_envs:
                install_conda(self.sshd[-1].home, self.conda_envs)

    def _stop_workers(self, name: str = "") -> None:
        for worker in self.sshd:
            worker.power_off()
        self.sshd.clear()

    def _provision(self, name: str, accelerator_type: str) -> list[SimEndpoint]:
        """The API created the node again: new VMs behind the same addresses."""
        self._stop_workers()
        self.generation += 1
        self._start_workers()
        return self._endpoints()

    def _endpoints(self) -> list[SimEndpoint]:
        return [SimEndpoint.of_sshd(w, hostname=f"{self.name}-w-{i}") for i, w in enumerate(self.sshd)]

    def __exit__(self, *exc_info: object) -> None:
        self._stop_workers()
        if getattr(self, "api", None) is not None:
            self.api.stop()

    @property
    def pin_file(self) -> Path:
        """Where tpuctl keeps this VM's pinned host keys (point TPUCTL_KNOWN_TPUS at it)."""
        return self.root / "known_tpus.json"

    def target_table(self, **settings) -> dict:
        """A tpuctl target that finds the workers through the TPU API, as for a real TPU VM."""
        return {"name": self.name, "project": self.api.project, "zone": self.api.zones[0],
                "tpu_api_endpoint": self.api.endpoint, "ssh_port": self.port,
                "identity_file": str(self.identity), **settings}

    def explicit_table(self, count: int | None = None, **settings) -> dict:
        """A tpuctl target naming the first `count` workers by address, with their keys pinned."""
        chosen = self.sshd[:count]
        return {"hosts": [w.hostport for w in chosen], "host_keys": [w.fingerprint for w in chosen],
                "identity_file": str(self.identity), **settings}

    def remote(self, index: int, path: str) -> Path:
        """A path on worker `index` as this machine sees it (`~/` is that worker's home)."""
        return self.sshd[index].home / path.removeprefix("~/")


def write_config(path: Path, table: dict, alias: str = "sim") -> Path:
    path.write_text(tomlkit.dumps({"default_target": alias, "targets": {alias: table}}))
    return path


def bare_origin(repository: Path, destination: Path) -> Path:
    """A bare clone of `repository`'s committed history, to serve as the VM's git origin."""
    subprocess.run(["git", "clone", "--quiet", "--bare", "--no-local", str(repository), str(destination)],
                   check=True, capture_output=True)
    return destination

"""A simulated TPU VM (or pod slice) built from real parts, shared by the tests, benchmarks and demo.

- its workers are real sshd servers at 127.0.0.2, 127.0.0.3, ... sharing one SSH port (as every
  TPU worker listens on 22), each with its own host key and home folder;
- the fake TPU API (real REST wire protocol) lists the node: its network endpoints point at the
  workers and its guest attributes publish their host keys, so discovery and host-key pinning run
  exactly as against Google;
- the repository the VM syncs from is a local bare git origin;
- with `conda_envs`, each worker has the conda stand-in of tpuctl.sim.conda, as the SOP's VM has
  conda (env `mllm-jax`).

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
    sshd: list[SshdWorker] = field(default_factory=list)

    def __enter__(self) -> SimTpuVm:
        self.root.mkdir(parents=True, exist_ok=True)
        self.identity = self.root / "id_ed25519"
        if not self.identity.exists():
            keygen(self.identity, comment="tpuctl-sim-client")
        addresses = [f"127.0.0.{FIRST_ADDRESS + i}" for i in range(self.workers)]
        port = free_port_on(addresses)
        authorized = self.identity.with_suffix(".pub").read_text()
        try:
            for i, address in enumerate(addresses):
                self.sshd.append(SshdWorker(self.root / f"worker{i}", address, authorized, port=port).start())
                if self.conda_envs:
                    install_conda(self.sshd[-1].home, self.conda_envs)
            self.api = FakeTpuApi().start()
        except BaseException:
            self.__exit__()
            raise
        self.api.add_node(self.name, [SimEndpoint.of_sshd(w, hostname=f"{self.name}-w-{i}")
                                      for i, w in enumerate(self.sshd)], accelerator_type=self.accelerator_type)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for worker in self.sshd:
            worker.stop()
        if getattr(self, "api", None) is not None:
            self.api.stop()

    @property
    def pin_file(self) -> Path:
        """Where tpuctl keeps this VM's pinned host keys (point TPUCTL_KNOWN_TPUS at it)."""
        return self.root / "known_tpus.json"

    def target_table(self, **settings) -> dict:
        """A tpuctl target that finds the workers through the TPU API, as for a real TPU VM."""
        return {"name": self.name, "project": self.api.project, "zone": self.api.zones[0],
                "tpu_api_endpoint": self.api.endpoint, "ssh_port": self.sshd[0].port,
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

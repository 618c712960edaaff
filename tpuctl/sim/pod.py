"""A simulated pod: N sshd workers on loopback, a client key, and a tpuctl.toml that targets them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from tpuctl.sim.sshd import SshdWorker, keygen


@dataclass
class SimPod:
    root: Path
    count: int
    first_address: int = 2
    workers: list[SshdWorker] = field(default_factory=list)

    def __enter__(self) -> SimPod:
        self.root.mkdir(parents=True, exist_ok=True)
        self.identity = self.root / "id_ed25519"
        if not self.identity.exists():
            keygen(self.identity, comment="tpuctl-sim-client")
        authorized = self.identity.with_suffix(".pub").read_text()
        for i in range(self.count):
            address = f"127.0.0.{self.first_address + i}"
            self.workers.append(SshdWorker(self.root / f"worker{i}", address, authorized).start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        for worker in self.workers:
            worker.stop()

    def target_table(self, **settings) -> dict:
        return {"hosts": [w.hostport for w in self.workers], "host_keys": [w.fingerprint for w in self.workers],
                "identity_file": str(self.identity), **settings}

    def write_config(self, path: Path, alias: str = "sim", **settings) -> Path:
        path.write_text(tomlkit.dumps({"targets": {alias: self.target_table(**settings)}}))
        return path

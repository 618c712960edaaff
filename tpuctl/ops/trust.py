"""Trust: the host keys the workers present, against the pinned ones, and pinning them in tpuctl.toml.

Scanning only reads a worker's key (an SSH handshake, no authentication), through the target's
proxy when it has one. Pins are written into the project file with everything else in it kept.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import paramiko

from tpuctl.config import Target
from tpuctl.transport import Outcome, Session, fingerprint
from tpuctl.workers import Worker, proxy_for


def scan_host_key(worker: Worker, proxy_command: str | None = None, timeout: float = 10.0) -> tuple[str, str]:
    """The key type and fingerprint a worker presents (through the proxy, if any); no authentication."""
    sock = (paramiko.ProxyCommand(proxy_command) if proxy_command
            else socket.create_connection((worker.host, worker.port), timeout=timeout))
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    finally:
        transport.close()
        sock.close()
    return key.get_name(), fingerprint(key)


@dataclass(frozen=True)
class SeenKey:
    """One worker's host key as presented, and what is pinned for it."""

    kind: str
    fingerprint: str
    pinned: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.pinned) and self.fingerprint not in self.pinned


def scan(session: Session, target: Target, workers: list[Worker]) -> list[Outcome[SeenKey]]:
    def seen(worker: Worker) -> SeenKey:
        kind, found = scan_host_key(worker, proxy_for(target, worker))
        return SeenKey(kind, found, worker.fingerprints)

    return session.each(workers, seen)


def write_pins(path: Path, target: Target, pins: dict[int, str], count: int) -> None:
    """Set host_keys of [targets.<alias>] in tpuctl.toml, keeping everything else in the file as it was."""
    import tomlkit

    document = tomlkit.parse(path.read_text())
    table = document.setdefault("targets", tomlkit.table()).setdefault(target.alias, tomlkit.table())
    keys = list(table.get("host_keys", [])) + [""] * count
    for index, key in pins.items():
        keys[index] = key
    table["host_keys"] = keys[:count]
    path.write_text(tomlkit.dumps(document))

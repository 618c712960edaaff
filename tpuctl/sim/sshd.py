"""Real OpenSSH servers on loopback addresses, one per simulated worker.

Each worker has its own host key, its own address (127.0.0.2, 127.0.0.3, ...) and its own home
folder, so the files of one "VM" never mix with another's although they share this machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


def sshd_path() -> str:
    """sshd must be started by absolute path (it re-executes itself)."""
    for path in SSHD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("sshd")
    if found:
        return found
    raise RuntimeError("sshd not found: install openssh-server (apt-get install -y openssh-server)")


def keygen(path: Path, comment: str = "tpuctl-sim") -> Path:
    """An ed25519 key pair at `path` / `path`.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def fingerprint_of(public_key_path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key_path)],
                         check=True, capture_output=True, text=True).stdout
    return out.split()[1]


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def free_port_on(addresses: list[str], tries: int = 50) -> int:
    """One port free on every address: a simulated pod's sshds share it, as TPU workers all use port 22."""
    for _ in range(tries):
        port = free_port(addresses[0])
        try:
            for address in addresses[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {', '.join(addresses)} after {tries} tries")


@dataclass
class SshdWorker:
    """One sshd on `address`:`port` whose sessions see `home` as $HOME."""

    root: Path
    address: str
    authorized_keys: str
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        self.host_key = self.root / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            keygen(self.host_key, comment=f"host-{self.address}")
        self.port = self.port or free_port(self.address)
        (self.root / "authorized_keys").write_text(self.authorized_keys)
        self.config_path = self.root / "sshd_config"
        self.config_path.write_text(self._config())

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def hostport(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.host_key.with_suffix(".pub"))

    def _config(self) -> str:
        return "\n".join([
            f"Port {self.port}", f"ListenAddress {self.address}", f"HostKey {self.host_key}",
            "PidFile none", f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "Subsystem sftp internal-sftp",
            f"SetEnv HOME={self.home}", "MaxStartups 100:30:200", "MaxSessions 100", "LogLevel ERROR", "",
        ])

    def start(self, timeout: float = 10.0) -> SshdWorker:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        log = open(self.root / "sshd.log", "ab")
        self.process = subprocess.Popen([sshd_path(), "-D", "-e", "-f", str(self.config_path)],
                                        stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd on {self.hostport} exited: {(self.root / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"sshd on {self.hostport} did not answer within {timeout} s")

    def stop(self) -> None:
        """Stop the server and every session it forked, as a dropped VM would."""
        if self.process is None:
            return
        for pid in [self.process.pid, *_descendants(self.process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        self.process = None

    def power_off(self) -> None:
        """The VM goes away: the server, its sessions, and every process started through it (detached
        runs too: each carries this worker's HOME in its environment)."""
        self.stop()
        marker = f"HOME={self.home}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    def session_pids(self) -> list[int]:
        """The processes serving this server's open connections (its descendants), not the listener."""
        return _descendants(self.process.pid) if self.process is not None else []

    def restart(self) -> SshdWorker:
        self.stop()
        return self.start()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found.extend(kids)
        frontier.extend(kids)
    return found

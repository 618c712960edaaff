"""`tpuctl tail`: read a run's log by byte offset over SFTP.

The offset of the last byte shown is kept on this side, so when the connection drops (sshd
restart, network blip, preemption of a proxy) the follower reconnects and goes on from exactly
that byte: no line is shown twice and none is skipped. Only complete lines are shown while
following; the partial last line waits for its newline (or for the run to end).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paramiko

from tpuctl.console import TpuctlError, err_console
from tpuctl.remote.git import LOGS_DIR, parse_fields
from tpuctl.remote.shell import rpath, script
from tpuctl.transport import ConnectError, Session
from tpuctl.workers import Worker

READ_CHUNK = 1 << 20
_DROPPED = (OSError, EOFError, paramiko.SSHException)


def locate_script(repo: str, name: str) -> str:
    """Resolve NAME_latest to the run's own files, so a newer launch does not switch streams."""
    return script(
        f"cd {rpath(repo)} 2>/dev/null || {{ echo 'missing=no checkout'; exit 0; }}",
        f"latest={LOGS_DIR}/{shlex.quote(name)}_latest.log",
        '[ -L "$latest" ] || { echo "missing=no run"; exit 0; }',
        f'log="$PWD/{LOGS_DIR}/$(readlink "$latest")"',
        'echo "log=$log"; echo "exit=${log%.log}.exit"',
    )


@dataclass
class LogFollower:
    """Follows one worker's log file; `emit` receives each complete line (without newline)."""

    session: Session
    worker: Worker
    log_path: str
    exit_path: str
    emit: Callable[[str], None]
    offset: int = 0
    pending: bytes = b""
    reconnect_timeout_s: float = 300.0
    _sftp: paramiko.SFTPClient | None = field(default=None, repr=False)

    def last_lines(self, count: int) -> None:
        """Show the last `count` lines and set the offset to the end of the file."""
        size = self._size()
        if size == 0:
            return
        window = 64 * 1024
        while True:
            start = max(0, size - window)
            data = self._read(start, size - start)
            if data.count(b"\n") > count or start == 0:
                break
            window *= 4
        lines = data.split(b"\n")
        complete, self.pending = lines[:-1], lines[-1]
        for line in complete[-count:] if count else []:
            self.emit(line.decode(errors="replace"))
        self.offset = size

    def poll(self) -> bool:
        """Show what was appended since the last poll; True once the run has ended and all is shown."""
        finished = self.exit_code() is not None
        size = self._size()
        if size < self.offset:  # truncated or replaced under us: start over rather than miss lines
            self.offset, self.pending = 0, b""
        while self.offset < size:
            data = self._read(self.offset, min(READ_CHUNK, size - self.offset))
            if not data:
                break
            self.offset += len(data)
            self._emit_lines(data)
        if finished and self.pending:
            self.emit(self.pending.decode(errors="replace"))
            self.pending = b""
        return finished

    def follow(self, until_exit: bool, interval_s: float = 0.5) -> int | None:
        """Poll until the run ends (or forever, without `until_exit`), reconnecting on drops."""
        while True:
            if self._guarded(self.poll) and until_exit:
                return self._guarded(self.exit_code)
            time.sleep(interval_s)

    def _guarded(self, action: Callable[[], object]):
        """Run `action`, reconnecting with backoff while the worker is unreachable (never on a bad host key)."""
        deadline = time.monotonic() + self.reconnect_timeout_s
        delay = 0.25
        while True:
            try:
                return action()
            except (*_DROPPED, ConnectError) as exc:
                if self._sftp is not None:
                    err_console.print(f"{self.worker.label}: connection lost ({type(exc).__name__}); reconnecting",
                                      highlight=False, markup=False)
                self._reset()
                if time.monotonic() > deadline:
                    raise TpuctlError(f"worker {self.worker.index} ({self.worker.address}): lost the connection "
                                      f"and could not reconnect within {self.reconnect_timeout_s:.0f} s: {exc}") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _emit_lines(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            self.emit(line.decode(errors="replace"))

    def exit_code(self) -> int | None:
        try:
            with self._sftp_client().open(self.exit_path, "rb") as handle:
                text = handle.read(32).decode().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.lstrip("-").isdigit() else None

    def _size(self) -> int:
        """The log's size; 0 while the runner has not created it yet."""
        try:
            return self._sftp_client().stat(self.log_path).st_size or 0
        except FileNotFoundError:
            return 0

    def _read(self, start: int, length: int) -> bytes:
        with self._sftp_client().open(self.log_path, "rb") as handle:
            handle.seek(start)
            return handle.read(length)

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.session.sftp(self.worker)
        return self._sftp

    def _reset(self) -> None:
        self._sftp = None
        self.session.drop(self.worker)


def locate(session: Session, worker: Worker, repo: str, name: str) -> tuple[str, str]:
    found = parse_fields(session.exec(worker, locate_script(repo, name), "finding the run").out)
    if "missing" in found:
        raise TpuctlError(f"worker {worker.index}: no run named {name!r} ({found['missing']})")
    return found["log"], found["exit"]


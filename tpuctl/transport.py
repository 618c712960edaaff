"""SSH to workers with paramiko: pinned host keys, keepalives and timeouts, retried connects, fan-out.

Host keys are verified against pinned OpenSSH SHA256 fingerprints and nothing else: no
known_hosts file is read and no key is ever added on first sight. An unknown or changed key
fails closed with the fingerprint that was seen and how to pin it.

A worker that stops answering (its sshd stopped, a network path gone silent) is a dropped
connection, not a hang: keepalives go out every third of the target's `ssh_timeout`, SFTP
requests time out after `ssh_timeout` seconds, and a command whose output has been silent that
long is checked by opening a channel, which needs an answer. Callers such as `tail` reconnect.

Plain paramiko, not fabric: fabric's `Connection.run` reads output without noticing a worker that
went silent, its `ThreadingGroup` runs one command per host where an operation here runs several
steps per worker (scripts and SFTP), and its string gateway re-reads our quoted ProxyCommand as
ssh_config text, expanding `%` tokens in it. What fabric would have added is the connection object
itself, a few lines here.
"""

from __future__ import annotations

import base64
import hashlib
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paramiko

from tpuctl.config import Target
from tpuctl.console import BadInput, TpuctlError
from tpuctl.remote.render import RenderedScript
from tpuctl.retry import backoff_s, retrying
from tpuctl.workers import Worker, proxy_for

CONNECT_ATTEMPTS = 4
CONNECT_TIMEOUT_S = 10.0


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's `SHA256:...` fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class HostKeyError(TpuctlError):
    """The worker presented a host key that is not pinned: refuse to talk to it."""


class PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept exactly the pinned fingerprints; every other key is refused."""

    def __init__(self, worker: Worker, target_alias: str):
        self.worker = worker
        self.target_alias = target_alias

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        seen = fingerprint(key)
        pin_hint = f"`tpuctl --target {self.target_alias} trust --worker {self.worker.index} --write"
        if not self.worker.fingerprints:
            raise HostKeyError(
                f"{self.worker} presented an unknown {key.get_name()} host key {seen}; nothing is pinned for it. "
                f"Check the fingerprint out of band, then pin it with {pin_hint}` or add it to host_keys"
            )
        if seen not in self.worker.fingerprints:
            raise HostKeyError(
                f"{self.worker} presented host key {seen}, but {', '.join(self.worker.fingerprints)} is pinned: "
                f"the key CHANGED. If the VM was recreated, re-pin with {pin_hint} --replace`; otherwise do not connect"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)


class ConnectError(TpuctlError):
    pass


class ConnectionLost(ConnectError):
    """An open connection stopped answering within the target's ssh_timeout."""


def _retryable(exc: BaseException) -> bool:
    """Connection-level failures are retried; authentication and host-key refusals never are."""
    if isinstance(exc, (paramiko.AuthenticationException, HostKeyError, paramiko.BadHostKeyException,
                        FileNotFoundError, PermissionError)):
        return False
    if isinstance(exc, paramiko.SSHException):
        return "banner" in str(exc).lower() or "reset" in str(exc).lower()
    return isinstance(exc, (OSError, EOFError))


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    code: int

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    @property
    def failure(self) -> str:
        """The last line the script wrote to stderr, or its exit status."""
        lines = [line.strip() for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.code}"


@dataclass
class Outcome[T]:
    """One worker's result, or the error that stopped it; never both."""

    worker: Worker
    value: T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Session:
    """Lazily opened, reused SSH connections (and SFTP clients) to the workers of one target.

    `proxy_command` overrides the target's proxy template (proxy_command / tunnel_through_iap).
    """

    def __init__(self, target: Target, proxy_command: str | None = None):
        identity = target.identity_file
        if identity and not Path(identity).expanduser().is_file():
            raise BadInput(f"identity_file {identity!r} not found: expected the private key file that logs in to the workers")
        self.target = target
        self.proxy_command = proxy_command
        self._clients: dict[int, paramiko.SSHClient] = {}
        self._sftps: dict[int, paramiko.SFTPClient] = {}
        self._lock = threading.Lock()

    def transport(self, worker: Worker) -> paramiko.Transport:
        """The worker's live SSH transport, connecting (again) when there is none."""
        with self._lock:
            client = self._clients.get(worker.index)
        transport = client.get_transport() if client is not None else None
        if transport is None or not transport.is_active():
            client = self._connect(worker)
            with self._lock:
                self._clients[worker.index] = client
            transport = client.get_transport()
        return transport

    def _connect(self, worker: Worker) -> paramiko.SSHClient:
        try:
            return retrying(lambda: self._connect_once(worker), _retryable, lambda exc, attempt: backoff_s(attempt, 0.25, 2.0),
                            attempts=CONNECT_ATTEMPTS)
        except Exception as exc:
            if not _retryable(exc):
                raise _user_error(worker, exc) from None
            raise ConnectError(f"cannot connect to {worker} after {CONNECT_ATTEMPTS} attempts: {_describe(exc)}") from None

    def _connect_once(self, worker: Worker) -> paramiko.SSHClient:
        """One attempt: pinned key policy, the target's user and key (no agent, no ~/.ssh config), its proxy."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(PinnedKeyPolicy(worker, self.target.alias))
        identity = self.target.identity_file
        keys = {"key_filename": [str(Path(identity).expanduser())], "look_for_keys": False, "allow_agent": False}
        proxy = proxy_for(self.target, worker, self.proxy_command)
        try:
            client.connect(worker.host, port=worker.port, username=self.target.user, timeout=CONNECT_TIMEOUT_S,
                           banner_timeout=CONNECT_TIMEOUT_S, auth_timeout=CONNECT_TIMEOUT_S,
                           sock=paramiko.ProxyCommand(proxy) if proxy else None, **(keys if identity else {}))
            client.get_transport().set_keepalive(max(1, self.target.ssh_timeout // 3))
        except BaseException:
            client.close()
            raise
        return client

    def exec(self, worker: Worker, script: RenderedScript, what: str, timeout: float | None = 300.0) -> ExecResult:
        """Run a bash script on the worker, fed on stdin so it never shows in the remote process list.

        A non-zero exit raises TpuctlError naming the worker, `what` was being done and the script's
        last line on stderr. Only a script from tpuctl.remote.render is run: hand-built shell text,
        where a value could become syntax, is refused before anything is sent.
        """
        if not isinstance(script, RenderedScript):
            raise TypeError("only scripts from tpuctl.remote.render run on a worker")
        channel = self.transport(worker).open_session(timeout=CONNECT_TIMEOUT_S)
        try:
            channel.exec_command("bash -s")
            channel.sendall(script.encode())
            channel.shutdown_write()
            stdout, stderr = _drain(channel, timeout, self.target.ssh_timeout)
            result = ExecResult(stdout, stderr, channel.recv_exit_status())
        except TimeoutError:
            raise TpuctlError(f"{worker}: {what}: no answer within {timeout:.0f} s") from None
        except ConnectionLost as exc:
            self.drop(worker)
            raise ConnectionLost(f"{worker}: {what}: {exc}") from None
        finally:
            channel.close()
        if result.code != 0:
            raise TpuctlError(f"{worker}: {what} failed: {result.failure}")
        return result

    def sftp(self, worker: Worker) -> paramiko.SFTPClient:
        """The worker's SFTP client, whose requests time out after ssh_timeout seconds (socket.timeout, an OSError)."""
        transport = self.transport(worker)
        with self._lock:
            client = self._sftps.get(worker.index)
        if client is None or client.get_channel().get_transport() is not transport:
            client = paramiko.SFTPClient.from_transport(transport)
            with self._lock:
                self._sftps[worker.index] = client
        client.get_channel().settimeout(self.target.ssh_timeout)
        return client

    def drop(self, worker: Worker) -> None:
        """Forget a worker's connection (after it broke) so the next use reconnects."""
        with self._lock:
            sftp, client = self._sftps.pop(worker.index, None), self._clients.pop(worker.index, None)
        for closable in (sftp, client):
            if closable is not None:
                closable.close()

    def close(self) -> None:
        with self._lock:
            open_ones = [*self._sftps.values(), *self._clients.values()]
            self._sftps, self._clients = {}, {}
        for closable in open_ones:
            closable.close()

    def each[T](self, workers: Sequence[Worker], work: Callable[[Worker], T]) -> list[Outcome[T]]:
        """Run `work` on every worker in parallel; each worker's error is kept, none hides another."""
        def guarded(worker: Worker) -> Outcome[T]:
            try:
                return Outcome(worker, value=work(worker))
            except TpuctlError as exc:
                return Outcome(worker, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - reported per worker, never swallowed
                self.drop(worker)
                return Outcome(worker, error=f"{worker}: {_describe(exc)}")

        if len(workers) <= 1:
            return [guarded(worker) for worker in workers]
        with ThreadPoolExecutor(max_workers=min(len(workers), 32)) as pool:
            return list(pool.map(guarded, workers))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _drain(channel: paramiko.Channel, timeout: float | None, silent_s: float) -> tuple[bytes, bytes]:
    """Read stdout and stderr until the command ends; both at once, so neither can block the other.

    After `silent_s` seconds without a byte the worker must prove it still answers (see _still_answers).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    stdout, stderr = bytearray(), bytearray()
    heard = time.monotonic()
    while True:
        if channel.recv_ready():
            stdout += channel.recv(65536)
            heard = time.monotonic()
        elif channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
            heard = time.monotonic()
        elif channel.closed or (channel.eof_received and channel.exit_status_ready()):
            return bytes(stdout), bytes(stderr)
        elif deadline is not None and time.monotonic() > deadline:
            raise TimeoutError()
        elif time.monotonic() - heard > silent_s:
            _still_answers(channel.get_transport(), silent_s)
            heard = time.monotonic()
        else:
            select.select([channel], [], [], 0.5)


def _still_answers(transport: paramiko.Transport, timeout_s: float) -> None:
    """Open (and close) a channel: the server must answer that, even while a command runs silently."""
    try:
        transport.open_session(timeout=timeout_s).close()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise ConnectionLost(f"the worker stopped answering for {timeout_s:.0f} s ({_describe(exc)})") from None


def _user_error(worker: Worker, exc: BaseException) -> TpuctlError:
    if isinstance(exc, TpuctlError):
        return exc
    if isinstance(exc, paramiko.AuthenticationException):
        return TpuctlError(f"{worker}: authentication failed; check user and "
                           f"identity_file (the public key must be in the VM's authorized keys or metadata)")
    return TpuctlError(f"{worker}: {_describe(exc)}")


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"


"""Tail: read a run's log on each worker by byte offset over SFTP, and follow it until the run ends.

The offset of the last byte shown is kept on this side, so when the connection drops (sshd
restart, network blip, a worker that stops answering and times out, preemption of a proxy) the
follower reconnects and goes on from exactly that byte: no line is shown twice and none is
skipped. A log that was truncated or replaced under it, even one that has grown past the offset
again, is noticed by the bytes just before the offset and read again from its start. Only
complete lines are shown while following; the partial last line waits for its newline (or for
the run to end). A run that is gone without an exit file (killed with its runner, its host
rebooted) is reported as vanished instead of being waited for forever. With --progress, a ProgressWatch
reads the run's progress from its metrics.jsonl (tpuctl.ops.metrics) beside the followed log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paramiko

from tpuctl.config import Target
from tpuctl.console import EXIT_FAILED, TpuctlError
from tpuctl.ops.metrics import Progress, read_progress
from tpuctl.pairs import fields
from tpuctl.remote.render import RenderedScript, render
from tpuctl.retry import backoff_s, retrying
from tpuctl.transport import ConnectError, Session
from tpuctl.workers import Worker

READ_CHUNK = 1 << 20
CHECK_BYTES = 64  # bytes before the offset re-read to notice a log replaced under the follower
_DROPPED = (OSError, EOFError, paramiko.SSHException)
PROGRESS_INTERVAL_S = 2.0


class RunVanished(TpuctlError):
    """The run has no process left and no exit file: it will never end by itself."""


def locate_script(repo: str, name: str) -> RenderedScript:
    """Resolve NAME_latest to the run's own files, so a newer launch does not switch streams."""
    return render("locate", repo=repo, name=name)


def run_state_script(base: str) -> RenderedScript:
    return render("run_state", base=base)


@dataclass
class LogFollower:
    """Follows one worker's log file; `emit` receives each complete line (without newline), `notice` each
    dropped connection it reconnects from."""

    session: Session
    worker: Worker
    base: str
    emit: Callable[[str], None]
    name: str = ""
    notice: Callable[[str], None] = lambda text: None
    offset: int = 0
    pending: bytes = b""
    reconnect_timeout_s: float = 300.0
    liveness_interval_s: float = 2.0
    _seen: bytes = b""  # the last CHECK_BYTES bytes read, ending at `offset`
    _checked_at: float = 0.0
    _sftp: paramiko.SFTPClient | None = field(default=None, repr=False)

    @property
    def log_path(self) -> str:
        return self.base + ".log"

    @property
    def exit_path(self) -> str:
        return self.base + ".exit"

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
        self.offset, self._seen = start + len(data), data[-CHECK_BYTES:]

    def poll(self) -> bool:
        """Show what was appended since the last poll; True once the run has ended and all is shown."""
        finished = self.exit_code() is not None
        size = self._size()
        if size < self.offset or (size > self.offset and not self._same_history()):
            self.offset, self.pending, self._seen = 0, b"", b""  # replaced under us: start over, miss nothing
        while self.offset < size:
            data = self._read(self.offset, min(READ_CHUNK, size - self.offset))
            if not data:
                break
            self.offset += len(data)
            self._seen = (self._seen + data)[-CHECK_BYTES:]
            self._emit_lines(data)
        if finished and self.pending:
            self.emit(self.pending.decode(errors="replace"))
            self.pending = b""
        if not finished:
            self._check_alive()
        return finished

    def _same_history(self) -> bool:
        """The bytes before the offset are still those shown: the file only grew."""
        return not self._seen or self._read(self.offset - len(self._seen), len(self._seen)) == self._seen

    def _check_alive(self) -> None:
        """Every `liveness_interval_s`, ask the worker whether the run still lives (pid, boot, start time)."""
        if time.monotonic() - self._checked_at < self.liveness_interval_s:
            return
        self._checked_at = time.monotonic()
        state = fields(self.session.exec(self.worker, run_state_script(self.base), "checking the run").out)
        if state.get("state") == "vanished" and self.exit_code() is None:
            raise RunVanished(f"{self.worker}: run {self.name!r} vanished: no "
                              "process left and no exit file (killed with its runner, or the host rebooted or was "
                              "preempted); see tpuctl status")

    def follow(self, until_exit: bool, interval_s: float = 0.5) -> int | None:
        """Poll until the run ends (or forever, without `until_exit`), reconnecting on drops."""
        while True:
            if self._guarded(self.poll) and until_exit:
                return self._guarded(self.exit_code)
            time.sleep(interval_s)

    def _guarded(self, action: Callable[[], object]):
        """Run `action`, reconnecting with backoff while the worker is unreachable (never on a bad host key)."""
        try:
            return retrying(action, lambda exc: isinstance(exc, (*_DROPPED, ConnectError)),
                            lambda exc, attempt: backoff_s(attempt, 0.25, 5.0), deadline_s=self.reconnect_timeout_s,
                            on_failure=self._lost)
        except (*_DROPPED, ConnectError) as exc:
            raise TpuctlError(f"{self.worker}: lost the connection and could not reconnect within "
                              f"{self.reconnect_timeout_s:.0f} s: {exc}") from None

    def _lost(self, exc: Exception) -> None:
        if self._sftp is not None:
            self.notice(f"{self.worker.label}: connection lost ({type(exc).__name__}); reconnecting")
        self._reset()

    def _emit_lines(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            self.emit(line.decode(errors="replace"))

    def exit_code(self) -> int | None:
        try:
            with self._sftp_client().open(self.exit_path, "rb") as handle:
                text = handle.read(32).decode(errors="replace").strip()
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


def locate(session: Session, worker: Worker, repo: str, name: str) -> str:
    """The base path (`/abs/logs/NAME_STAMP`) of the newest run named `name` on `worker`."""
    found = fields(session.exec(worker, locate_script(repo, name), "finding the run").out)
    if "missing" in found:
        raise TpuctlError(f"worker {worker.index}: no run named {name!r} ({found['missing']})")
    return found["base"]


@dataclass
class Followed:
    """Each worker's run exit code (None: still running) and the errors that stopped following."""

    codes: dict[int, int | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The run's own exit code: the first non-zero one across workers, EXIT_FAILED if tail itself failed."""
        if self.errors:
            return EXIT_FAILED
        failed = [code for code in self.codes.values() if code]
        return failed[0] if failed else 0


def follow_logs(session: Session, target: Target, workers: list[Worker], name: str, emit: Callable[[Worker, str], None],
                notice: Callable[[str], None], lines: int = 40, follow: bool = False, until_exit: bool = False,
                from_start: bool = False) -> Followed:
    """Emit the last `lines` lines (or, `from_start`, the whole log) of each worker's run, then follow them
    all at once while `follow`, or until the run ends with `until_exit`."""
    result = Followed()
    located = session.each(workers, lambda w: locate(session, w, target.remote_repo, name))
    result.errors.extend(o.error for o in located if not o.ok)
    followers = [LogFollower(session, o.worker, o.value, emit=lambda line, w=o.worker: emit(w, line), name=name,
                             notice=notice) for o in located if o.ok]
    if not from_start:
        for follower in followers:
            follower.last_lines(lines)
    if follow or until_exit:
        _follow_all(followers, until_exit, result)
    return result


def _follow_all(followers: list[LogFollower], until_exit: bool, result: Followed) -> None:
    def run(follower: LogFollower) -> None:
        try:
            result.codes[follower.worker.index] = follower.follow(until_exit)
        except TpuctlError as exc:
            result.errors.append(str(exc))

    threads = [threading.Thread(target=run, args=(f,), daemon=True) for f in followers]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # short joins keep Ctrl-C responsive
            thread.join(0.2)


class ProgressWatch:
    """Reads a run's progress every PROGRESS_INTERVAL_S in a thread and hands it to `show`. Best effort:
    a read that fails (a dropped connection, which the log's follower reconnects from) is skipped.

    It has its own SFTP client on the worker's connection: paramiko's SFTPClient serves one thread at a
    time (a second thread's reply can be read, and dropped, by the first), and the log's follower uses
    the session's.
    """

    def __init__(self, session: Session, target_repo: str, worker: Worker, name: str,
                 show: Callable[[Progress], None], interval_s: float = PROGRESS_INTERVAL_S):
        self.session, self.target_repo, self.worker, self.name = session, target_repo, worker, name
        self.show, self.interval_s = show, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProgressWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        base, sftp = None, None
        try:
            while True:
                # Asked to stop (the run ended): one more read, so the bar ends on the run's last state
                # rather than on what it was up to an interval before.
                last = self._stop.is_set()
                try:
                    base = base or locate(self.session, self.worker, self.target_repo, self.name)
                    sftp = sftp or self._open_sftp()
                    progress = read_progress(sftp, base)
                    if progress is not None:
                        self.show(progress)
                except (TpuctlError, OSError, EOFError, paramiko.SSHException):
                    sftp = _closed(sftp)  # a new client at the next read; the follower reconnects the connection
                if last:
                    return
                self._stop.wait(self.interval_s)
        finally:
            _closed(sftp)

    def _open_sftp(self) -> paramiko.SFTPClient:
        sftp = paramiko.SFTPClient.from_transport(self.session.transport(self.worker))
        sftp.get_channel().settimeout(self.session.target.ssh_timeout)
        return sftp


def _closed(sftp: paramiko.SFTPClient | None) -> None:
    if sftp is not None:
        try:
            sftp.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # a connection already gone

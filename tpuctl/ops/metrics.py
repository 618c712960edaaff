"""A run's metrics.jsonl (trainer.metrics_log) read from a worker: copied to this machine by byte offset
for `tpuctl report`, and its tail read for the progress `status` and `tail --progress` show.

The trainer links its file beside the run's log, as logs/NAME_STAMP.metrics.jsonl (TPUCTL_METRICS_LINK,
set by the runner), so the run's files name it whatever the command's out_dir. Everything here reads
bytes over SFTP and parses them as data; nothing a worker wrote reaches a shell.

The local copy holds the first N bytes of the remote file, so the next fetch reads only what was
appended. The file is append-only except when a run resumes: the trainer then cuts it back to the
checkpoint's step and appends a new header. A fetch notices that by the size (smaller than the copy)
or by ANCHOR_BYTES bytes just before the copy's end (no longer the same), and reads the file again from
its start. A file cut back while it is being read is noticed the same way, by the bytes before the end
of every chunk read, compared once more after the last one: the fetch starts over (at most
FETCH_ATTEMPTS times), so a copy is always one state of the file, never pieces of two.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tpuctl.console import TpuctlError
from trainer.metrics_log import RunMetrics, parse_metrics

if TYPE_CHECKING:
    import paramiko

LINK_SUFFIX = ".metrics.jsonl"  # after a run's base, logs/NAME_STAMP
ANCHOR_BYTES = 256
READ_CHUNK = 1 << 20
FETCH_ATTEMPTS = 3
TAIL_BYTES = 64 * 1024  # about 80 step lines: the last MEAN_OVER steps and usually the header
TAIL_MAX_BYTES = 1 << 20
HEAD_BYTES = 64 * 1024  # the first header (its config included) when the tail holds none
MEAN_OVER = 10  # steps in the mean step time


def metrics_link(base: str) -> str:
    """The path of a run's metrics.jsonl link from the run's base (`/abs/logs/NAME_STAMP`)."""
    return base + LINK_SUFFIX


class RemoteFile(Protocol):
    def size(self) -> int | None:
        """The file's size; None when there is no such file."""

    def read(self, start: int, length: int) -> bytes:
        """Up to `length` bytes from `start`; fewer only at the end of the file."""


class SftpFile:
    """A file on a worker read over SFTP through one handle, opened at the first use (a symlink is
    followed then): each size and read is one request, not an open, a request and a close."""

    def __init__(self, sftp: paramiko.SFTPClient, path: str):
        self.sftp, self.path = sftp, path
        self._handle: paramiko.SFTPFile | None = None

    def size(self) -> int | None:
        try:
            return self._opened().stat().st_size or 0
        except FileNotFoundError:
            return None

    def read(self, start: int, length: int) -> bytes:
        handle = self._opened()
        handle.seek(start)
        return handle.read(length)

    def source(self) -> str:
        """The file the link points at: a resumed run's new launch links the same file."""
        try:
            return self.sftp.normalize(self.path)
        except OSError:
            return self.path

    def _opened(self) -> paramiko.SFTPFile:
        if self._handle is None:
            self._handle = self.sftp.open(self.path, "rb")
        return self._handle

    def __enter__(self) -> SftpFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.close()


class MetricsMissing(TpuctlError):
    """The run has no metrics.jsonl (yet): the trainer links it when it starts."""


@dataclass(frozen=True)
class Fetched:
    data: bytes  # the whole file as it was at one moment
    new_bytes: int  # bytes read this time, beyond the local copy
    restarted: bool  # the copy no longer matched the file (a resumed run cut it back): read from its start


def fetch(remote: RemoteFile, copy: bytes) -> Fetched:
    """The remote file's bytes, reading only what follows `copy` while the file still begins with it."""
    for _ in range(FETCH_ATTEMPTS):
        size = remote.size()
        if size is None:
            raise MetricsMissing("no metrics.jsonl")
        known = copy if size >= len(copy) and _unchanged(remote, copy, [len(copy)]) else b""
        data, ends = _read_from(remote, known, size)
        if _unchanged(remote, data, ends):
            return Fetched(data, len(data) - len(known), bool(copy) and not known)
    raise TpuctlError(f"metrics.jsonl was rewritten during each of {FETCH_ATTEMPTS} reads; try again")


def _read_from(remote: RemoteFile, known: bytes, size: int) -> tuple[bytes, list[int]]:
    """`known` and the bytes after it up to `size` (or the file's end), and where each read ended."""
    chunks, ends, offset = [known], [len(known)], len(known)
    while offset < size:
        chunk = remote.read(offset, min(READ_CHUNK, size - offset))
        if not chunk:
            break  # cut back since the size was read: the anchors will tell
        chunks.append(chunk)
        offset += len(chunk)
        ends.append(offset)
    return b"".join(chunks), ends


def _unchanged(remote: RemoteFile, data: bytes, ends: list[int]) -> bool:
    """The remote file still holds what `data` holds in the ANCHOR_BYTES before each end."""
    for end in ends:
        start = max(0, end - ANCHOR_BYTES)
        if end and remote.read(start, end - start) != data[start:end]:
            return False
    return True


@dataclass(frozen=True)
class LocalCopy:
    """A run's metrics.jsonl copied into a report folder (NAME.metrics.jsonl, which `trainer report` reads
    too), with the file it was copied from (.NAME.source.json): a copy of another file is read again."""

    folder: Path
    name: str

    @property
    def data_path(self) -> Path:
        return self.folder / f"{self.name}{LINK_SUFFIX}"

    @property
    def source_path(self) -> Path:
        return self.folder / f".{self.name}.source.json"

    def load(self, source: str) -> bytes:
        try:
            same = json.loads(self.source_path.read_text()).get("source") == source
            return self.data_path.read_bytes() if same else b""
        except (OSError, ValueError, AttributeError):
            return b""

    def save(self, source: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for path, content in ((self.data_path, data), (self.source_path, json.dumps({"source": source}).encode())):
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_bytes(content)
            os.replace(temporary, path)


def read_tail(remote: RemoteFile) -> RunMetrics | None:
    """The last header and last steps of the file, from a small read of its end; None without a file.

    The window grows until it holds MEAN_OVER + 1 steps (or the file's start, or TAIL_MAX_BYTES); when
    it holds no header, the file's first line gives it (a resume's later header can then be missed,
    which only matters when the resumed run changed `steps`).
    """
    size = remote.size()
    if size is None:
        return None
    window = TAIL_BYTES
    while True:
        start = max(0, size - window)
        data = remote.read(start, size - start)
        if start:
            data = data[data.find(b"\n") + 1:] if b"\n" in data else b""  # the first line is cut: not a line
        run = parse_metrics(data)
        if start == 0 or len(run.steps) > MEAN_OVER or window >= TAIL_MAX_BYTES:
            break
        window *= 4
    if not run.header and start:
        run.header = parse_metrics(_first_line(remote)).header
    return run


def _first_line(remote: RemoteFile) -> bytes:
    """The file's first line (a header with its config: a few KB), read in growing pieces up to HEAD_BYTES."""
    length = 4096
    while True:
        head = remote.read(0, length)
        if b"\n" in head or len(head) < length or length >= HEAD_BYTES:
            return head[:head.find(b"\n") + 1]
        length *= 4


@dataclass(frozen=True)
class Progress:
    steps_done: int  # the last logged step's index + 1; 0 before the first step
    total_steps: int | None  # None: no header (yet) or a damaged one
    mean_step_s: float | None  # mean time/step_s of the last MEAN_OVER steps (see progress_of)
    eta_s: float | None  # remaining steps x mean_step_s; None when either is unknown

    def as_json(self) -> dict[str, object]:
        return {"steps_done": self.steps_done, "total_steps": self.total_steps, "mean_step_s": self.mean_step_s,
                "eta_s": self.eta_s}

    @property
    def fraction(self) -> float | None:
        if not self.total_steps:
            return None
        return min(1.0, self.steps_done / self.total_steps)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def progress_of(run: RunMetrics) -> Progress:
    """Steps done, total, the mean step time and the ETA of a run's metrics.

    The mean is over the finite, non-negative time/step_s of the last MEAN_OVER steps, leaving out the
    first step after the run's (re)start when later ones are there: it includes compilation, often
    10-100x a step. It leaves out evaluation and checkpoint time, so the ETA is a lower bound on runs that
    evaluate or save often.
    """
    done = run.steps[-1]["step"] + 1 if run.steps else 0
    total = _count(run.header.get("total_steps"))
    window = run.steps[-MEAN_OVER:]
    after_compile = [r for r in window if r["step"] != run.header.get("start_step")]
    times = [float(r["time/step_s"]) for r in (after_compile or window) if _seconds(r.get("time/step_s"))]
    mean = sum(times) / len(times) if times else None
    eta = None
    if mean is not None and total is not None:
        try:
            eta = float(max(0, total - done)) * mean
        except OverflowError:  # a total too large for a float: no ETA
            eta = None
    return Progress(done, total, mean, eta if eta is not None and math.isfinite(eta) else None)


def read_progress(sftp: paramiko.SFTPClient, base: str) -> Progress | None:
    """The run's progress from a small read of its metrics.jsonl's tail; None when it has none (yet)."""
    with SftpFile(sftp, metrics_link(base)) as remote:
        run = read_tail(remote)
    return progress_of(run) if run is not None else None


def _seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def format_duration(seconds: float | None) -> str:
    """`42s`, `12m05s`, `3h04m`, `5d03h`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    if whole >= 10_000 * 86400:
        return ">9999d"
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe(progress: Progress | None) -> tuple[str, str, str]:
    """The status table's cells: steps done / total, mean step time, ETA."""
    if progress is None:
        return "", "", ""
    total = str(progress.total_steps) if progress.total_steps is not None else "?"
    mean = f"{progress.mean_step_s:.2f}" if progress.mean_step_s is not None else "?"
    return f"{progress.steps_done}/{total}", mean, format_duration(progress.eta_s)

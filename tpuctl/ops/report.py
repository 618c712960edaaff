"""Report: the metrics.jsonl of one or more runs fetched from a worker into the report folder, by byte
offset (tpuctl.ops.metrics), for trainer.report to draw.

The folder keeps each run's copy as NAME.metrics.jsonl: a second report reads only what the run
appended since, and `trainer report FOLDER/NAME.metrics.jsonl` draws it again without a connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tpuctl.console import TpuctlError
from tpuctl.ops.metrics import Fetched, LocalCopy, MetricsMissing, SftpFile, fetch, metrics_link
from tpuctl.ops.tail import locate
from tpuctl.transport import Session
from tpuctl.workers import Worker


@dataclass(frozen=True)
class FetchedRun:
    name: str
    copy: Path  # the local copy, NAME.metrics.jsonl in the report folder
    fetched: Fetched


@dataclass(frozen=True)
class ReportFetch:
    runs: list[FetchedRun]
    errors: list[str]  # one per run that could not be fetched


def fetch_run(session: Session, target_repo: str, worker: Worker, name: str, folder: Path) -> FetchedRun:
    base = locate(session, worker, target_repo, name)
    copy = LocalCopy(folder, name)
    with SftpFile(session.sftp(worker), metrics_link(base)) as remote:
        source = f"{worker.address} {remote.source()}"
        try:
            fetched = fetch(remote, copy.load(source))
        except MetricsMissing:
            raise MetricsMissing(f"{worker}: run {name!r} has no metrics.jsonl yet ({remote.path}: the trainer "
                                 "links it there when it starts; a command other than the trainer writes none)") from None
    copy.save(source, fetched.data)
    return FetchedRun(name, copy.data_path, fetched)


def fetch_runs(session: Session, target_repo: str, worker: Worker, names: Sequence[str], folder: Path) -> ReportFetch:
    """Each run's file into `folder`; a run that fails is reported and does not stop the others."""
    runs, errors = [], []
    for name in names:
        try:
            runs.append(fetch_run(session, target_repo, worker, name, folder))
        except TpuctlError as exc:
            errors.append(str(exc))
        except OSError as exc:  # SFTP's own errors (a permission, a dropped channel)
            errors.append(f"{worker}: run {name!r}: reading its metrics.jsonl: {exc}")
    return ReportFetch(runs, errors)

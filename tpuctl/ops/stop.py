"""Stop: TERM the newest run of a name on each worker, wait, KILL; then clear a stale libtpu lock file.

scripts/stop.sh signals only a process group verified as the run's (same boot, the runner's recorded
start time), never pid 0 or 1. A run whose lock is held while no process can be verified as it is
reported as `unverified` and left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tpuctl.config import Target
from tpuctl.ops.common import Step
from tpuctl.ops.runs import LIBTPU_LOCKFILE, TPU_DEVICE_PATTERNS
from tpuctl.pairs import fields, values_of
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker


def stop_script(target: Target, name: str, grace_s: float, lockfile: str = LIBTPU_LOCKFILE,
                device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> RenderedScript:
    """TERM the run's verified process group, wait up to `grace_s`, then KILL; then clear a stale lock file."""
    return render("stop", repo=target.remote_repo, name=name, ticks=max(1, int(grace_s * 10)),
                  tpu_lockfile=lockfile, device_patterns=device_patterns)


def stop_plan(target: Target, workers: list[Worker], name: str, grace_s: float) -> list[Step]:
    return [(worker, stop_script(target, name, grace_s)) for worker in workers]


@dataclass(frozen=True)
class Stopped:
    """What stopping did on one worker."""

    signal: str  # TERM | KILL | none (was not running) | unverified (left alone) | "" (no run of that name)
    lock: str  # what became of libtpu's lock file: absent | removed | kept (...)


@dataclass(frozen=True)
class StopReport:
    grace_s: float
    outcomes: list[Outcome[Stopped]]

    @property
    def ok(self) -> bool:
        """Every worker answered and no run was left alone unverified."""
        return all(o.ok and o.value.signal != "unverified" for o in self.outcomes)


def stop(session: Session, target: Target, workers: list[Worker], name: str, grace_s: float) -> StopReport:
    script = stop_script(target, name, grace_s)

    def stop_one(worker: Worker) -> Stopped:
        out = session.exec(worker, script, "stop", timeout=grace_s + 60).out
        signals = values_of(out, "signal")
        return Stopped(signals[-1] if signals else "", fields(out).get("lock", "?"))

    return StopReport(grace_s, session.each(workers, stop_one))

"""Doctor: who holds the TPU on each worker (scripts/doctor.sh), and, asked to, ending those holders.

The SOP's "TPU backend already in use" step done properly: the processes with a TPU device file open
(`/dev/accel*`, `/dev/vfio/*`): pid, user, age, command line, and the tpuctl run each belongs to; and
libtpu's lock file, stale when nothing holds the devices. `kill` signals only holders the caller names
by pid and start time, each verified again on the worker just before its signal: TERM, a grace period,
then KILL; the lock file goes only once nothing holds the devices.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

from tpuctl.config import Target
from tpuctl.ops.runs import LIBTPU_LOCKFILE, TPU_DEVICE_PATTERNS
from tpuctl.pairs import fields, values_of
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker

DEFAULT_GRACE_S = 10


@dataclass(frozen=True)
class Holder:
    pid: int
    start: int  # clock ticks since boot: with the pid, names this process and no later one
    user: str
    age_s: int
    run: str  # the tpuctl run it belongs to, "" for none
    command: str


@dataclass(frozen=True)
class DeviceReport:
    holders: list[Holder]
    holders_unknown: bool  # some process's open files could not be read (not root): holders may be missing
    lock_present: bool
    lock_age_s: int | None = None

    @property
    def lock_stale(self) -> bool:
        return self.lock_present and not self.holders and not self.holders_unknown


@dataclass(frozen=True)
class KillReport:
    terminated: list[int] = field(default_factory=list)  # sent TERM
    killed: list[int] = field(default_factory=list)  # still there after the grace period: sent KILL
    gone: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "PID reason": not signalled
    lock_after: str = ""


def doctor_script(target: Target, kill: Sequence[Holder] = (), grace_s: int = DEFAULT_GRACE_S,
                  lockfile: str = LIBTPU_LOCKFILE, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS
                  ) -> RenderedScript:
    return render("doctor", repo=target.remote_repo, device_patterns=device_patterns, tpu_lockfile=lockfile,
                  kill_pids=[f"{h.pid}:{h.start}" for h in kill], grace_s=grace_s)


def parse_holder(line: str) -> Holder:
    pid, start, user, age, run, encoded = (line.split(" ") + [""] * 6)[:6]
    command = base64.b64decode(encoded).decode(errors="replace").strip() if encoded else ""
    return Holder(int(pid), int(start), user, int(age), "" if run == "-" else run, command)


def parse_report(text: str) -> DeviceReport:
    found = fields(text)
    lock = found.get("lock", "absent").split()
    return DeviceReport([parse_holder(line) for line in values_of(text, "holder")], found.get("holders_unknown") == "1",
                        lock[0] == "present", int(lock[1]) if len(lock) > 1 and lock[1].lstrip("-").isdigit() else None)


def parse_kill(text: str) -> KillReport:
    pids = {key: [int(p) for p in values_of(text, key) if p.isdigit()] for key in ("term", "kill", "gone")}
    return KillReport(pids["term"], pids["kill"], pids["gone"], values_of(text, "skipped"),
                      fields(text).get("lock_after", ""))


def look(session: Session, target: Target, workers: list[Worker], lockfile: str = LIBTPU_LOCKFILE,
         device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> list[Outcome[DeviceReport]]:
    script = doctor_script(target, lockfile=lockfile, device_patterns=device_patterns)
    return session.each(workers, lambda w: parse_report(session.exec(w, script, "doctor").out))


def kill(session: Session, target: Target, worker: Worker, holders: Sequence[Holder], grace_s: int = DEFAULT_GRACE_S,
         lockfile: str = LIBTPU_LOCKFILE, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> KillReport:
    script = doctor_script(target, holders, grace_s, lockfile, device_patterns)
    return parse_kill(session.exec(worker, script, "doctor --kill", timeout=grace_s + 60.0).out)

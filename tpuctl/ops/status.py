"""Status: the newest run of a name on each worker (scripts/status.sh), and whether the cloud preempted it.

States: running (the recorded pid is still the run: same boot, same start time), exited N, vanished
(gone without an exit file: killed with its runner, or the host rebooted), none (no run of that
name), and preempted: a run that vanished, or a worker that does not answer, on a TPU VM the cloud
preempted or terminated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tpuctl.config import Target
from tpuctl.pairs import fields
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker

_STEP_FIELD = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True)
class RunStatus:
    state: str  # running | exited | vanished | none
    exit_code: int | None = None
    pid: int | None = None
    log: str = ""
    step: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"exited {self.exit_code}" if self.state == "exited" else self.state

    def as_json(self) -> dict[str, object]:
        return {"state": self.state, "exit_code": self.exit_code, "pid": self.pid, "log": self.log,
                "step": dict(self.step), "meta": dict(self.meta)}


def status_script(target: Target, name: str) -> RenderedScript:
    return render("status", repo=target.remote_repo, name=name)


def parse_step_line(line: str) -> dict[str, str]:
    """`step=3 loss=0.1 entropy=0.2 reward_mean=0.5 dt=1.2s` -> its fields (`dt` keeps no unit)."""
    found = dict(_STEP_FIELD.findall(line[line.find("step="):] if "step=" in line else ""))
    if "dt" in found:
        found["dt"] = found["dt"].removesuffix("s")
    return found


def parse_status(text: str) -> RunStatus:
    found = fields(text)
    state = found.get("state", "vanished")
    if state == "none":
        return RunStatus("none")
    pid = int(found["pid"]) if found.get("pid", "").isdigit() else None
    exit_text = found.get("exit", "").strip()
    exit_code = int(exit_text) if re.fullmatch(r"-?[0-9]{1,9}", exit_text) else None
    try:
        meta = json.loads(found["meta"]) if found.get("meta") else {}
    except json.JSONDecodeError:
        meta = {}
    return RunStatus(state, exit_code, pid, found.get("log", ""), parse_step_line(found.get("step", "")),
                     meta if isinstance(meta, dict) else {})


def read_status(session: Session, target: Target, worker: Worker, name: str) -> RunStatus:
    return parse_status(session.exec(worker, status_script(target, name), "status").out)


@dataclass(frozen=True)
class StatusReport:
    outcomes: list[Outcome[RunStatus]]
    preempted: set[int]  # indices of the workers the cloud preempted

    @property
    def ok(self) -> bool:
        """Every worker answered, or is preempted (which says why it does not)."""
        return all(o.ok or o.worker.index in self.preempted for o in self.outcomes)


def statuses(session: Session, target: Target, workers: list[Worker], name: str) -> StatusReport:
    outcomes = session.each(workers, lambda w: read_status(session, target, w, name))
    return StatusReport(outcomes, preempted_workers(target, outcomes))


def preempted_workers(target: Target, outcomes: list[Outcome[RunStatus]]) -> set[int]:
    """Workers whose run vanished, or who do not answer, on a TPU VM the cloud preempted or terminated.

    Asks the TPU API only when something vanished and the target names a TPU VM.
    """
    suspects = {o.worker.index for o in outcomes if not o.ok or o.value.state == "vanished"}
    if not suspects or not target.name:
        return set()
    from tpuctl.gcp.discovery import PREEMPTED_STATES, node_state

    return suspects if node_state(target) in PREEMPTED_STATES else set()

"""The events file of a babysat run: `logs/<name>.events.jsonl` beside tpuctl.toml, append-only, one JSON object a line.

Every line has `time` (UTC, ISO 8601 with microseconds) and `event`:
- `goal`: babysit began watching: `command` (the argv), `node` (the spec it recreates: accelerator_type,
  runtime_version, spot, preemptible, queued, labels, ssh_keys), `max_preemptions`, `max_failures`;
- `resumed`: a babysit started again on the same goal;
- `observed`: what a turn saw, written when it differs from the last one: `node`, `node_id`, `queued`,
  `runs`, `exit_codes`, `run_id`, `errors` (why workers did not answer), and `step` (the run's last step);
- `action`: what a turn did: `action` (tpuctl.ops.recovery.Action), `reason`, and the ids it counts
  (`preempted_node`, `failed_run`);
- `launched`: a run is being started: `run_id` (written before the launch, so a babysit killed during it
  still knows the run as its own) and `head`, the commit the workers were synced to (the first one is the
  commit a resumed run must keep);
- `prepare-failed`: a step before a launch failed (`step`, `attempt`; `run_id` when the launch itself
  failed, so that `launched` does not count as a start); `error`: a turn failed (`error`,
  `attempt`); the next turn looks again;
- `done`: babysit ended: `result` (succeed | fail | give-up), `exit_code`.

The file is the babysit's memory: `history` gives back what the reconcile step counted, and `summarize`
what `tpuctl status` and the final summary show (restarts, time lost to each preemption). A line cut
short by a crash mid-write is skipped when read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tpuctl.ops.recovery import Action, History


def events_path(name: str, folder: Path) -> Path:
    """The events file of run `name` in `folder` (the project folder's logs/, whatever the current folder)."""
    return folder / f"{name}.events.jsonl"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def append(path: Path, event: str, **fields: Any) -> dict[str, Any]:
    """Add one event; written with one write() of a whole line, and flushed to disk."""
    record = {"time": now_iso(), "event": event, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return record


def read(path: Path) -> list[dict[str, Any]]:
    """Every complete event, oldest first; none for a missing file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" in record and "time" in record:
            events.append(record)
    return events


def history(events: list[dict[str, Any]]) -> History:
    actions = [e for e in events if e["event"] == "action"]
    return History(preempted_nodes=frozenset(e["preempted_node"] for e in actions if e.get("preempted_node")),
                   failed_runs=frozenset(e["failed_run"] for e in actions if e.get("failed_run")))


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Summary:
    """What the events say about a babysat run."""

    command: list[str] = field(default_factory=list)
    started: str = ""
    launches: int = 0
    preemptions: int = 0
    failures: int = 0
    lost_s: list[float] = field(default_factory=list)  # per recovered preemption: seen preempted -> launched
    result: str = ""  # "" while babysit has not ended
    exit_code: int | None = None
    finished: str = ""

    @property
    def restarts(self) -> int:
        return max(self.launches - 1, 0)


def summarize(events: list[dict[str, Any]]) -> Summary:
    """Preemptions are counted by node id (a recreate refused and tried again is one preemption), failures by
    run id, and launches only when they started (a `launched` whose launch failed is followed by a
    `prepare-failed` naming its run_id): restarts and the time lost end at a run that really started."""
    summary = Summary()
    not_started = {e.get("run_id") for e in events if e["event"] == "prepare-failed" and e.get("run_id")}
    preempted: set[str] = set()
    failed: set[str] = set()
    lost_since: datetime | None = None
    for event in events:
        kind = event["event"]
        if kind == "goal":
            summary.command, summary.started = list(event.get("command", [])), event["time"]
        elif kind == "action" and event.get("action") == Action.RECREATE:
            preempted.add(event.get("preempted_node", ""))
            lost_since = lost_since or parse_time(event["time"])
        elif kind == "action" and event.get("failed_run"):
            failed.add(event["failed_run"])
        elif kind == "launched" and event.get("run_id") not in not_started:
            summary.launches += 1
            if lost_since is not None:
                summary.lost_s.append((parse_time(event["time"]) - lost_since).total_seconds())
                lost_since = None
        elif kind == "done":
            summary.result, summary.exit_code, summary.finished = event.get("result", ""), event.get("exit_code"), event["time"]
    summary.preemptions, summary.failures = len(preempted), len(failed)
    return summary

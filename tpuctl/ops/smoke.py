"""Smoke: the SOP's expected result of a smoke run, checked on each worker's log and exit code.

The steps before it (sync, secrets push, verify-env, launch, tail) are the operations of those
names; `tpuctl smoke` composes them. Here: reading the smoke run's log and exit code from a worker,
and the checks: the effective config shows the rollout backend, a step line, no traceback, exit 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tpuctl.config import Target
from tpuctl.ops.tail import locate
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker

SMOKE_RUN = "smoke"

STEP_LINE = re.compile(r"(?:^|\s)(step=\d+ loss=\S+ entropy=\S+ reward_mean=\S+ dt=[0-9.]+s)")
# At the start of a line, so an error message quoting the key ("config error: rollout.backend: ...") is no config.
_FLAT_BACKEND = re.compile(r"^\s*rollout\.backend\s*[:=]\s*['\"]?([\w.-]+)", re.MULTILINE)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def rollout_backend(log: str) -> str | None:
    """The rollout backend of the effective config printed in the log (nested YAML or `rollout.backend:`)."""
    flat = _FLAT_BACKEND.search(log)
    if flat:
        return flat[1]
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"(\s*)rollout:\s*", line):
            indent = len(line) - len(line.lstrip())
            for inner in lines[i + 1:]:
                if inner.strip() and len(inner) - len(inner.lstrip()) <= indent:
                    break
                match = re.fullmatch(r"\s*backend:\s*['\"]?([\w.-]+)['\"]?\s*", inner)
                if match:
                    return match[1]
    return None


def traceback_summary(log: str) -> str | None:
    """The exception line closing the last traceback in the log, e.g. `ValueError: bad batch`."""
    start = log.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    for line in log[start:].splitlines()[1:]:
        if line.strip() and not line[0].isspace():
            return line.strip()
    return "Traceback (no exception line)"


def check_smoke(log: str, exit_code: int | None, backend: str) -> list[Check]:
    seen_backend = rollout_backend(log)
    steps = STEP_LINE.findall(log)
    error = traceback_summary(log)
    return [
        Check("config shows rollout.backend", seen_backend == backend,
              f"rollout.backend: {seen_backend}" if seen_backend else "no effective config with rollout.backend"),
        Check("step line", bool(steps), steps[-1] if steps else "no `step=... dt=...s` line"),
        Check("no traceback", error is None, error or "none"),
        Check("exit code 0", exit_code == 0, exit_detail(log, exit_code, error)),
    ]


def exit_detail(log: str, exit_code: int | None, error: str | None) -> str:
    """The exit code; for a failure with no traceback (a config error, say) the log's last line too."""
    if exit_code is None:
        return "still running"
    last = next((line.strip() for line in reversed(log.splitlines()) if line.strip()), "")
    return f"exit {exit_code}: {last}" if exit_code != 0 and error is None and last else f"exit {exit_code}"


def read_run(session: Session, target: Target, worker: Worker, name: str = SMOKE_RUN) -> tuple[str, int | None]:
    """The newest run's whole log and its exit code (None: no exit file yet)."""
    base = locate(session, worker, target.remote_repo, name)
    sftp = session.sftp(worker)
    with sftp.open(base + ".log", "rb") as handle:
        log = handle.read().decode(errors="replace")
    try:
        with sftp.open(base + ".exit", "rb") as handle:
            text = handle.read(32).decode().strip()
    except FileNotFoundError:
        return log, None
    return log, int(text) if text.lstrip("-").isdigit() else None


def check_smoke_runs(session: Session, target: Target, workers: list[Worker], backend: str) -> list[Outcome[list[Check]]]:
    """The SOP's checks on every worker's smoke run."""
    return session.each(workers, lambda w: check_smoke(*read_run(session, target, w), backend))

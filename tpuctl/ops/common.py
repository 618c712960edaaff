"""What operations share: a dry-run plan's steps, and the read-only preflight that may refuse an operation.

A preflight script prints `problem=...` lines for anything that must stop the operation before it
changes a worker, and `warning=...` lines for what the user should know. It runs on every worker
first; only when it passes everywhere does the operation change anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import paramiko

from tpuctl.pairs import values_of
from tpuctl.remote.render import RenderedScript
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker

# How --dry-run names a temporary file the scripts create with mktemp (the template ends in 12 Xs).
TEMPORARY = "<mktemp: {path}.tpuctl-" + "X" * 12 + ">"


@dataclass(frozen=True)
class Note:
    """A line of --dry-run output between two scripts (a step that is not a script, such as an SFTP write)."""

    text: str


Step = tuple[Worker, RenderedScript | Note]  # one step of a dry-run plan: what runs on which worker


@dataclass(frozen=True)
class Preflight:
    """Every worker's answer to a read-only check: the lines it printed, or the error that stopped it."""

    outcomes: list[Outcome[str]]

    @property
    def reached(self) -> bool:
        """Every worker answered."""
        return all(outcome.ok for outcome in self.outcomes)

    @property
    def problems(self) -> list[str]:
        """`worker N: <problem>` for each problem line, in worker order; a problem several workers share is
        named once (`workers 0, 1, 2: <problem>`), so a pod's one-line refusal does not repeat it per host."""
        found: dict[str, list[int]] = {}
        for o in self.outcomes:
            for line in values_of(o.value, "problem") if o.ok else ():
                found.setdefault(line, []).append(o.worker.index)
        return [f"worker {indices[0]}: {line}" if len(indices) == 1 else
                f"workers {', '.join(map(str, indices))}: {line}" for line, indices in found.items()]

    @property
    def warnings(self) -> list[tuple[Worker, str]]:
        return [(o.worker, line) for o in self.outcomes if o.ok for line in values_of(o.value, "warning")]

    @property
    def passed(self) -> bool:
        return self.reached and not self.problems


def preflight(session: Session, workers: list[Worker], script: Callable[[Worker], RenderedScript], what: str,
              forward_agent: bool = False) -> Preflight:
    """Run the read-only `script` on every worker at once (with this machine's SSH agent when asked)."""
    return Preflight(session.each(workers, lambda w: session.exec(w, script(w), what, forward_agent=forward_agent).out))


def remove_temporaries(sftp: paramiko.SFTPClient, *paths: str) -> None:
    """Best-effort cleanup after a failed copy, called while its error propagates: a connection that dropped
    makes paramiko raise SSHException (not an OSError), which must not replace the error being reported."""
    for path in paths:
        try:
            sftp.remove(path)
        except (OSError, paramiko.SSHException):
            pass

"""What every command shares: its options, the target it acts on, and per-worker reporting.

Kept light on purpose: paramiko is imported only once a command runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from tpuctl.config import Overrides, Target, load_target
from tpuctl.console import EXIT_FAILED, console, err_console, shown
from tpuctl.remote.render import ssh_preview
from tpuctl.workers import Worker, proxy_for, select_workers

if TYPE_CHECKING:
    from tpuctl.transport import Outcome, Session

WorkerOpt = Annotated[str, typer.Option("--worker", "-w", help="Workers: 0 | all | 0,2 | 1-3.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print every remote script per worker, in order; change nothing.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
NameOpt = Annotated[str, typer.Option("--name", help="Run name: logs/<name>_<UTC stamp>.{log,exit,pid}.")]
DEFAULT_RUN = "train"


@dataclass(frozen=True)
class Note:
    """A line of --dry-run output between two scripts (a step that is not a script, such as an SFTP write)."""

    text: str


def target_of(ctx: typer.Context) -> Target:
    overrides = ctx.find_root().obj
    return load_target(overrides if isinstance(overrides, Overrides) else Overrides())


def workers_of(ctx: typer.Context, spec: str, require_ready: bool = True) -> tuple[Target, list[Worker]]:
    target = target_of(ctx)
    return target, select_workers(target, spec, require_ready)


def open_session(target: Target) -> Session:
    from tpuctl.transport import Session

    return Session(target)


def report_errors(outcomes: Sequence[Outcome]) -> bool:
    """Print each failed worker's error; True when every worker succeeded."""
    for outcome in outcomes:
        if not outcome.ok:
            err_console.print(f"[red]{outcome.worker.label} failed:[/] {shown(outcome.error or '')}")
    return all(outcome.ok for outcome in outcomes)


def fail_unless(ok: bool) -> None:
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def print_dry_run(target: Target, scripts: Sequence[tuple[Worker, str | Note]]) -> None:
    for worker, item in scripts:
        text = item.text if isinstance(item, Note) else ssh_preview(
            worker.index, target.user, worker.host, worker.port, item, proxy_for(target, worker))
        console.out(text, highlight=False)

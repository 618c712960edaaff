"""`tpuctl tail`: show and follow a run's log on one or more workers (tpuctl.ops.tail)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Annotated

import typer

from tpuctl.commands.common import DEFAULT_RUN, NameOpt, WorkerOpt, open_session, workers_of
from tpuctl.commands.views import LogLines, ProgressLine, show_followed
from tpuctl.console import BadInput, console

if TYPE_CHECKING:
    from tpuctl.transport import Session
    from tpuctl.workers import Worker


def tail(ctx: typer.Context, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all",
         lines: Annotated[int, typer.Option("-n", "--lines", help="Lines to show first (0 or more).")] = 40,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
         until_exit: Annotated[bool, typer.Option("--until-exit", help="Follow until the run ends; exit with its code.")] = False,
         progress: Annotated[bool, typer.Option("--progress", help=(
             "While following, a one-line bar under the log: steps done of the total, s/step, ETA (from the first "
             "worker's metrics.jsonl; only on a terminal)."))] = False,
         ) -> None:
    """Show the last lines of a run's log; follow it across dropped connections without gaps or repeats."""
    from tpuctl.ops.runs import check_run_name
    from tpuctl.ops.tail import follow_logs

    check_run_name(name)
    if lines < 0:
        raise BadInput(f"bad --lines {lines}: expected 0 or more lines")
    if progress and not (follow or until_exit):
        raise BadInput("--progress: expected with --follow or --until-exit (a bar under a log being followed)")
    target, workers = workers_of(ctx, worker)
    printer = LogLines(labelled=len(workers) > 1)
    with open_session(target) as session, _progress_bar(session, target.remote_repo, workers[0], name, progress):
        followed = follow_logs(session, target, workers, name, printer.emit, printer.notice, lines, follow, until_exit)
    show_followed(followed)
    raise typer.Exit(followed.exit_code if until_exit or followed.errors else 0)


def _progress_bar(session: Session, repo: str, worker: Worker, name: str, wanted: bool) -> AbstractContextManager:
    """The bar and the thread that feeds it, when asked for and stdout is a terminal; else nothing."""
    if not wanted or not console.is_terminal:
        return contextlib.nullcontext()
    from tpuctl.ops.tail import ProgressWatch

    stack = contextlib.ExitStack()
    line = stack.enter_context(ProgressLine())
    stack.enter_context(ProgressWatch(session, repo, worker, name, line.show))
    return stack


def register(app: typer.Typer) -> None:
    app.command()(tail)

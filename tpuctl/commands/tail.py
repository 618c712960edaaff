"""`tpuctl tail`: show and follow a run's log on one or more workers (tpuctl.ops.tail)."""

from __future__ import annotations

from typing import Annotated

import typer

from tpuctl.commands.common import DEFAULT_RUN, NameOpt, WorkerOpt, open_session, workers_of
from tpuctl.commands.views import LogLines, show_followed
from tpuctl.console import BadInput


def tail(ctx: typer.Context, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all",
         lines: Annotated[int, typer.Option("-n", "--lines", help="Lines to show first (0 or more).")] = 40,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
         until_exit: Annotated[bool, typer.Option("--until-exit", help="Follow until the run ends; exit with its code.")] = False,
         ) -> None:
    """Show the last lines of a run's log; follow it across dropped connections without gaps or repeats."""
    from tpuctl.ops.runs import check_run_name
    from tpuctl.ops.tail import follow_logs

    check_run_name(name)
    if lines < 0:
        raise BadInput(f"bad --lines {lines}: expected 0 or more lines")
    target, workers = workers_of(ctx, worker)
    printer = LogLines(labelled=len(workers) > 1)
    with open_session(target) as session:
        followed = follow_logs(session, target, workers, name, printer.emit, printer.notice, lines, follow, until_exit)
    show_followed(followed)
    raise typer.Exit(followed.exit_code if until_exit or followed.errors else 0)


def register(app: typer.Typer) -> None:
    app.command()(tail)

"""`tpuctl tail`: show and follow a run's log on one or more workers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

import typer

from tpuctl.commands.common import DEFAULT_RUN, NameOpt, WorkerOpt, open_session, workers_of
from tpuctl.config import Target
from tpuctl.console import EXIT_FAILED, BadInput, TpuctlError, console, err_console, printable, shown
from tpuctl.remote.runs import check_run_name
from tpuctl.workers import Worker


@dataclass
class Followed:
    """Each worker's run exit code (None: still running) and the errors that stopped following."""

    codes: dict[int, int | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The run's own exit code: the first non-zero one across workers, EXIT_FAILED if tail itself failed."""
        if self.errors:
            return EXIT_FAILED
        failed = [code for code in self.codes.values() if code]
        return failed[0] if failed else 0


def follow_logs(session, target: Target, workers: list[Worker], name: str, lines: int, follow: bool,
                until_exit: bool, from_start: bool = False) -> Followed:
    """Print the last `lines` lines (or, `from_start`, the whole log) of each worker's run, then follow."""
    from tpuctl.follow import LogFollower, locate

    result = Followed()
    located = session.each(workers, lambda w: locate(session, w, target.remote_repo, name))
    result.errors.extend(o.error for o in located if not o.ok)
    printing = threading.Lock()
    labelled = len(workers) > 1

    def emitter(worker: Worker):
        def emit(line: str) -> None:
            with printing:
                console.out(f"[{worker.label}] {printable(line)}" if labelled else printable(line), highlight=False)
        return emit

    followers = [LogFollower(session, o.worker, o.value, emit=emitter(o.worker), name=name) for o in located if o.ok]
    if not from_start:
        for follower in followers:
            follower.last_lines(lines)
    if follow or until_exit:
        _follow_all(followers, until_exit, result)
    for error in result.errors:
        err_console.print(f"[red]error:[/] {shown(error)}")
    return result


def _follow_all(followers, until_exit: bool, result: Followed) -> None:
    def run(follower) -> None:
        try:
            result.codes[follower.worker.index] = follower.follow(until_exit)
        except TpuctlError as exc:
            result.errors.append(str(exc))

    threads = [threading.Thread(target=run, args=(f,), daemon=True) for f in followers]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # short joins keep Ctrl-C responsive
            thread.join(0.2)


def tail(ctx: typer.Context, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all",
         lines: Annotated[int, typer.Option("-n", "--lines", help="Lines to show first (0 or more).")] = 40,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
         until_exit: Annotated[bool, typer.Option("--until-exit", help="Follow until the run ends; exit with its code.")] = False,
         ) -> None:
    """Show the last lines of a run's log; follow it across dropped connections without gaps or repeats."""
    check_run_name(name)
    if lines < 0:
        raise BadInput(f"bad --lines {lines}: expected 0 or more lines")
    target, workers = workers_of(ctx, worker)
    with open_session(target) as session:
        followed = follow_logs(session, target, workers, name, lines, follow, until_exit)
    raise typer.Exit(followed.exit_code if until_exit or followed.errors else 0)


def register(app: typer.Typer) -> None:
    app.command()(tail)

"""`tpuctl babysit -- CMD...`: keep a command running on a (spot) TPU VM until it exits 0, recreating the
VM after each preemption (tpuctl.ops.babysit, tpuctl.ops.recovery)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tpuctl.commands.common import DEFAULT_RUN, CommandArg, EnvFileOpt, NameOpt, project_folder, target_of
from tpuctl.commands.views import show_babysit_event, show_babysit_summary
from tpuctl.console import BadInput


def babysit(ctx: typer.Context, command: CommandArg = None, name: NameOpt = DEFAULT_RUN,
            max_preemptions: Annotated[int, typer.Option(help="Preemptions to recover before giving up (exit 3).")] = 10,
            max_failures: Annotated[int, typer.Option(help="Times to relaunch a run that exits non-zero (flaky code).")] = 0,
            env_file: EnvFileOpt = Path(".env"),
            poll: Annotated[float, typer.Option(help="Seconds between two looks at the node and the run.")] = 60.0,
            ) -> None:
    """Run `-- CMD...` until it exits 0: recreate the TPU VM when it is preempted, resync, set up and relaunch."""
    from tpuctl.gcp.api import connect, require
    from tpuctl.ops import events
    from tpuctl.ops.babysit import Babysitter, Goal, checkpoint_problem, node_spec
    from tpuctl.ops.recovery import Limits
    from tpuctl.ops.runs import check_run_name

    if not command:
        raise BadInput("no command to babysit: give it after `--`, e.g. tpuctl babysit -- trainer --preset ...")
    check_run_name(name)
    for option, value in (("--max-preemptions", max_preemptions), ("--max-failures", max_failures)):
        if not 0 <= value <= 10000:
            raise BadInput(f"bad {option} {value}: expected a count from 0 to 10000")
    if not 0.1 <= poll <= 3600:
        raise BadInput(f"bad --poll {poll:g}: expected seconds from 0.1 to 3600")
    problem = checkpoint_problem(command)
    if problem:
        raise BadInput(problem)
    target = target_of(ctx)
    require(target, "name", "the TPU VM to babysit (babysit recreates it after a preemption)")
    path = events.events_path(name, project_folder(ctx) / "logs")
    goal = Goal(name, list(command), Limits(max_preemptions, max_failures), env_file, poll)
    sitter = Babysitter(target, goal, path, show_babysit_event)
    sitter.begin(node_spec(connect(target), target.name) if not events.read(path) else sitter.spec())
    code = sitter.run()
    show_babysit_summary(events.summarize(events.read(path)), sitter.last_step, sitter.failure_tail)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(babysit)

"""`tpuctl babysit -- CMD...`: keep a command running on a (spot) TPU VM until it exits 0, recreating the
VM after each preemption (tpuctl.ops.babysit, tpuctl.ops.recovery)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tpuctl.commands.common import (
    DEFAULT_RUN,
    CommandArg,
    EnvFileOpt,
    NameOpt,
    UnpushedOpt,
    checked_local_checkout,
    project_folder,
    target_of,
)
from tpuctl.commands.views import show_babysit_event, show_babysit_summary
from tpuctl.console import BadInput

if TYPE_CHECKING:
    from tpuctl.config import Target


def babysit(ctx: typer.Context, command: CommandArg = None, name: NameOpt = DEFAULT_RUN,
            max_preemptions: Annotated[int, typer.Option(help="Preemptions to recover before giving up (exit 3).")] = 10,
            max_failures: Annotated[int, typer.Option(help="Times to relaunch a run that exits non-zero (flaky code).")] = 0,
            env_file: EnvFileOpt = Path(".env"),
            poll: Annotated[float, typer.Option(help="Seconds between two looks at the node and the run.")] = 60.0,
            allow_unpushed: UnpushedOpt = False,
            follow_branch: Annotated[bool, typer.Option(
                "--follow-branch", help="After a preemption, resume on whatever origin/BRANCH then holds (by default "
                                        "babysit refuses a commit other than the first launch's).")] = False,
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
    checked_local_checkout(ctx, target, allow_unpushed)
    check_before_begin(target, env_file)
    path = events.events_path(name, project_folder(ctx) / "logs")
    goal = Goal(name, list(command), Limits(max_preemptions, max_failures), env_file, poll, follow_branch)
    sitter = Babysitter(target, goal, path, show_babysit_event)
    sitter.begin(node_spec(connect(target), target.name) if not events.read(path) else sitter.spec())
    code = sitter.run()
    show_babysit_summary(events.summarize(events.read(path)), sitter.last_step, sitter.failure_tail)
    raise typer.Exit(code)


def check_before_begin(target: Target, env_file: Path) -> None:
    """What the first prepare (and every one after a preemption, days later) reads here: refused now, exit 2,
    before anything is recorded or touched."""
    from tpuctl.envfile import load_env_file
    from tpuctl.ops.git_auth import check_agent, read_deploy_key

    check_agent(target)
    if target.deploy_key:
        read_deploy_key(target)
    if env_file.exists():
        load_env_file(env_file)


def register(app: typer.Typer) -> None:
    app.command()(babysit)

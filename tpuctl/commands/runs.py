"""Detached runs on the workers: `launch`, `status`, `stop` (tpuctl.ops.launch, .status, .stop)."""

from __future__ import annotations

from typing import Annotated

import typer

from tpuctl.commands.common import (
    DEFAULT_RUN,
    CommandArg,
    DryRunOpt,
    JsonOpt,
    NameOpt,
    WorkerOpt,
    fail_unless,
    open_session,
    project_folder,
    workers_of,
)
from tpuctl.commands.views import print_dry_run, show_babysit_status, show_launch, show_status, show_stop
from tpuctl.console import BadInput

EnvOpt = Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE for the run (not secrets: use .env).")]


def launch(ctx: typer.Context, command: CommandArg = None, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all",
           env: EnvOpt = None, dry_run: DryRunOpt = False) -> None:
    """Start `-- CMD...` detached (setsid nohup) on the workers; logs/<name>_<stamp>.{log,exit,pid,meta.json}."""
    from tpuctl.ops.launch import LaunchPlan, launch_plan, parse_env_options
    from tpuctl.ops.launch import launch as launch_run
    from tpuctl.ops.runs import check_run_name, utc_stamp

    if not command:
        raise BadInput("no command to launch: give it after `--`, e.g. tpuctl launch -- trainer --preset smoke")
    plan = LaunchPlan(check_run_name(name), utc_stamp(), tuple(command), parse_env_options(env or []))
    target, workers = workers_of(ctx, worker)
    if dry_run:
        print_dry_run(target, launch_plan(target, workers, plan))
        return
    with open_session(target) as session:
        fail_unless(show_launch(launch_run(session, target, workers, plan)))


def status(ctx: typer.Context, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all", as_json: JsonOpt = False) -> None:
    """Per worker: running / exited N / vanished / preempted / none, and the last step line's fields; for a
    babysat run also its restarts and the time lost to preemptions (from logs/<name>.events.jsonl here)."""
    from tpuctl.ops import events
    from tpuctl.ops.runs import check_run_name
    from tpuctl.ops.status import statuses

    check_run_name(name)
    target, workers = workers_of(ctx, worker, require_ready=False)
    with open_session(target) as session:
        report = statuses(session, target, workers, name)
    ok = show_status(report, as_json)
    babysat = events.read(events.events_path(name, project_folder(ctx) / "logs"))
    if babysat and not as_json:
        show_babysit_status(events.summarize(babysat))
    fail_unless(ok)


def stop(ctx: typer.Context, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all",
         grace: Annotated[float, typer.Option(help="Seconds between TERM and KILL (0 or more).")] = 30.0,
         dry_run: DryRunOpt = False) -> None:
    """TERM the run's verified process group, wait, then KILL; then remove a stale libtpu lock file."""
    from tpuctl.ops.runs import check_run_name
    from tpuctl.ops.stop import stop as stop_runs
    from tpuctl.ops.stop import stop_plan

    check_run_name(name)
    if not 0 <= grace <= 86400:
        raise BadInput(f"bad --grace {grace:g}: expected seconds from 0 to 86400")
    target, workers = workers_of(ctx, worker)
    if dry_run:
        print_dry_run(target, stop_plan(target, workers, name, grace))
        return
    with open_session(target) as session:
        fail_unless(show_stop(stop_runs(session, target, workers, name, grace), name))


def register(app: typer.Typer) -> None:
    app.command()(launch)
    app.command()(status)
    app.command()(stop)

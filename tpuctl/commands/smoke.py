"""`tpuctl smoke`: the whole SOP in one command, then the SOP's expected result checked per worker.

sync -> secrets push -> verify-env -> launch -> tail until exit -> checks: the operations of those
commands (tpuctl.ops), each shown as its command shows it. When verify-env finds no Python environment
(the venv or conda env is missing, or jax is not installed: a fresh VM), smoke runs `tpuctl setup`
and verifies again. A failed step stops the sequence; the summary shows every step, including those not run.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tpuctl.commands import views
from tpuctl.commands.common import (
    CommandArg,
    DryRunOpt,
    EnvFileOpt,
    UnpushedOpt,
    WorkerOpt,
    checked_local_checkout,
    expected_backend,
    fail_unless,
    open_session,
    workers_of,
)
from tpuctl.console import TpuctlError, console, shown

if TYPE_CHECKING:
    from tpuctl.config import Target
    from tpuctl.envfile import EnvFile
    from tpuctl.ops.common import Step
    from tpuctl.ops.launch import LaunchPlan
    from tpuctl.ops.sync import SyncLabels
    from tpuctl.transport import Session
    from tpuctl.workers import Worker

SmokeStep = tuple[str, Callable[["Session"], bool]]  # a step's name, and its operation shown as its command shows it


def smoke(ctx: typer.Context, command: CommandArg = None, worker: WorkerOpt = "all",
          env_file: EnvFileOpt = Path(".env"), dry_run: DryRunOpt = False,
          expect_backend: Annotated[str | None, typer.Option(help="Expected jax backend (default: the target's).")] = None,
          rollout_backend: Annotated[str, typer.Option(help="Rollout backend the effective config must show.")] = "sglang_jax",
          allow_unpushed: UnpushedOpt = False) -> None:
    """Run the SOP end to end (sync, secrets, verify-env, launch, tail) and check the SOP's expected result."""
    from tpuctl.envfile import load_env_file
    from tpuctl.ops.launch import LaunchPlan
    from tpuctl.ops.runs import utc_stamp
    from tpuctl.ops.smoke import SMOKE_RUN
    from tpuctl.ops.sync import SyncLabels

    target, workers = workers_of(ctx, worker)
    backend = expected_backend(expect_backend, target.expect_backend)
    env = load_env_file(env_file) if env_file.exists() else None
    plan = LaunchPlan(SMOKE_RUN, utc_stamp(), tuple(command or shlex.split(target.smoke_command)))
    labels = SyncLabels.at(datetime.now(UTC), "smoke")
    if dry_run:
        views.print_dry_run(target, _plan(target, workers, env, labels, plan))
        return
    checked_local_checkout(ctx, target, allow_unpushed)
    summary = Table("step", "worker", "result", "detail", title="smoke")
    with open_session(target) as session:
        passed = _run_steps(session, _steps(target, workers, env, backend, labels, plan), summary)
        if passed:
            passed = _check_runs(session, target, workers, rollout_backend, summary)
    console.print(summary)
    console.print("[green]SMOKE PASSED[/]" if passed else "[red]SMOKE FAILED[/]")
    fail_unless(passed)


def _plan(target: Target, workers: list[Worker], env: EnvFile | None, labels: SyncLabels, plan: LaunchPlan) -> list[Step]:
    """--dry-run: every script the smoke would run, in order, preflights included."""
    from tpuctl.ops.launch import launch_plan
    from tpuctl.ops.secrets import push_plan
    from tpuctl.ops.sync import sync_plan
    from tpuctl.ops.verify import verify_plan

    steps: list[Step] = []
    for worker in workers:
        steps += sync_plan(target, [worker], labels)
        steps += push_plan(target, [worker], env.path) if env else []
        steps += verify_plan(target, [worker])
    return steps + launch_plan(target, workers, plan)


def _steps(target: Target, workers: list[Worker], env: EnvFile | None, backend: str, labels: SyncLabels,
           plan: LaunchPlan) -> list[SmokeStep]:
    from tpuctl.ops.launch import launch
    from tpuctl.ops.secrets import push_secrets
    from tpuctl.ops.smoke import SMOKE_RUN
    from tpuctl.ops.sync import sync
    from tpuctl.ops.tail import follow_logs

    lines = views.LogLines(labelled=len(workers) > 1)
    return [
        ("sync", lambda s: views.show_sync(sync(s, target, workers, labels), target)),
        ("secrets", lambda s: views.show_push(push_secrets(s, target, workers, env), env) if env else _skip("no local .env")),
        ("verify-env", lambda s: _verify_or_set_up(s, target, workers, backend)),
        ("launch", lambda s: views.show_launch(launch(s, target, workers, plan))),
        ("tail", lambda s: views.show_followed(follow_logs(s, target, workers, SMOKE_RUN, lines.emit, lines.notice,
                                                           until_exit=True, from_start=True))),
    ]


def _verify_or_set_up(session: Session, target: Target, workers: list[Worker], backend: str) -> bool:
    from tpuctl.ops.setup import missing_environment, setup
    from tpuctl.ops.verify import verify

    report = verify(session, target, workers, backend)
    if not report.ok and missing_environment(report):
        console.print("[yellow]no Python environment on some worker: running tpuctl setup[/]", highlight=False)
        if not views.report_errors(setup(session, target, workers, on_done=views.show_prepared)):
            return False
        report = verify(session, target, workers, backend)
    return views.show_verify(report)


def _skip(reason: str) -> bool:
    console.print(f"[yellow]skipped:[/] {reason}", highlight=False)
    return True


def _run_steps(session: Session, steps: list[SmokeStep], summary: Table) -> bool:
    for position, (name, action) in enumerate(steps):
        console.rule(name)
        try:
            ok = action(session)
        except TpuctlError as exc:
            console.print(f"[red]{name} failed:[/] {shown(str(exc))}", highlight=False)
            ok = False
        summary.add_row(name, "all", "[green]ok[/]" if ok else "[red]failed[/]", "")
        if not ok:
            for later, _ in steps[position + 1:]:
                summary.add_row(later, "all", "not run", "")
            return False
    return True


def _check_runs(session: Session, target: Target, workers: list[Worker], rollout: str, summary: Table) -> bool:
    from tpuctl.ops.smoke import Check, check_smoke_runs

    passed = True
    for o in check_smoke_runs(session, target, workers, rollout):
        for check in o.value if o.ok else [Check("read log", False, o.error or "")]:
            summary.add_row(check.name, o.worker.label, "[green]pass[/]" if check.passed else "[red]FAIL[/]",
                            shown(check.detail))
            passed = passed and check.passed
    return passed


def register(app: typer.Typer) -> None:
    app.command()(smoke)

"""`tpuctl smoke`: the whole SOP in one command, then the SOP's expected result checked per worker.

sync -> secrets push -> verify-env -> launch -> tail until exit -> checks. A failed step stops
the sequence; the summary shows every step, including those not run.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tpuctl.commands.common import DryRunOpt, Note, WorkerOpt, fail_unless, open_session, print_dry_run, workers_of
from tpuctl.commands.runs import CommandArg, launch_scripts, run_launch, utc_stamp
from tpuctl.commands.secrets import EnvFileOpt, push_preview, run_push
from tpuctl.commands.sync import run_sync
from tpuctl.commands.tail import follow_logs
from tpuctl.commands.verify import run_verify
from tpuctl.config import BACKENDS, Target
from tpuctl.console import BadInput, TpuctlError, console, shown
from tpuctl.envfile import EnvFile, load_env_file
from tpuctl.remote.git import apply_script, preflight_script
from tpuctl.remote.probe import probe_script
from tpuctl.remote.runs import LaunchPlan
from tpuctl.smoke_checks import Check, check_smoke
from tpuctl.workers import Worker

SMOKE_RUN = "smoke"


def _log_and_exit(session, worker: Worker, target: Target) -> tuple[str, int | None]:
    from tpuctl.follow import locate

    base = locate(session, worker, target.remote_repo, SMOKE_RUN)
    sftp = session.sftp(worker)
    with sftp.open(base + ".log", "rb") as handle:
        log = handle.read().decode(errors="replace")
    try:
        with sftp.open(base + ".exit", "rb") as handle:
            text = handle.read(32).decode().strip()
    except FileNotFoundError:
        return log, None
    return log, int(text) if text.lstrip("-").isdigit() else None


def _steps(target: Target, workers: list[Worker], env: EnvFile | None, backend: str,
           plan: LaunchPlan) -> list[tuple[str, Callable[[object], bool]]]:
    now = datetime.now(UTC)
    stash, stamp = "tpuctl smoke " + now.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y%m%dT%H%M%SZ")
    return [
        ("sync", lambda s: run_sync(s, target, workers, stash, stamp)),
        ("secrets", lambda s: run_push(s, target, workers, env) if env else _skip("no local .env")),
        ("verify-env", lambda s: run_verify(s, target, workers, backend)),
        ("launch", lambda s: run_launch(s, target, workers, plan)),
        ("tail", lambda s: not follow_logs(s, target, workers, SMOKE_RUN, 0, False, True, from_start=True).errors),
    ]


def _skip(reason: str) -> bool:
    console.print(f"[yellow]skipped:[/] {reason}", highlight=False)
    return True


def _print_plan(target: Target, workers: list[Worker], env: EnvFile | None, plan: LaunchPlan) -> None:
    """--dry-run: every script the smoke would run, in order, preflights included."""
    now = datetime.now(UTC)
    stash, stamp = "tpuctl smoke " + now.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y%m%dT%H%M%SZ")
    items: list[tuple[Worker, str | Note]] = []
    for worker in workers:
        items += [(worker, preflight_script(target)), (worker, apply_script(target, stash, stamp))]
        items += [(worker, item) for item in push_preview(target, env.path)] if env else []
        items.append((worker, probe_script(target)))
    print_dry_run(target, items + launch_scripts(target, workers, plan))


def smoke(ctx: typer.Context, command: CommandArg = None, worker: WorkerOpt = "all",
          env_file: EnvFileOpt = Path(".env"), dry_run: DryRunOpt = False,
          expect_backend: Annotated[str | None, typer.Option(help="Expected jax backend (default: the target's).")] = None,
          rollout_backend: Annotated[str, typer.Option(help="Rollout backend the effective config must show.")] = "sglang_jax",
          ) -> None:
    """Run the SOP end to end (sync, secrets, verify-env, launch, tail) and check the SOP's expected result."""
    target, workers = workers_of(ctx, worker)
    backend = expect_backend or target.expect_backend
    if backend not in BACKENDS:
        raise BadInput(f"bad --expect-backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    env = load_env_file(env_file) if env_file.exists() else None
    plan = LaunchPlan(SMOKE_RUN, utc_stamp(), tuple(command or shlex.split(target.smoke_command)))
    if dry_run:
        _print_plan(target, workers, env, plan)
        return
    summary = Table("step", "worker", "result", "detail", title="smoke")
    with open_session(target) as session:
        passed = _run_steps(session, _steps(target, workers, env, backend, plan), summary)
        if passed:
            passed = _check_logs(session, target, workers, rollout_backend, summary)
    console.print(summary)
    console.print("[green]SMOKE PASSED[/]" if passed else "[red]SMOKE FAILED[/]")
    fail_unless(passed)


def _run_steps(session, steps, summary: Table) -> bool:
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


def _check_logs(session, target: Target, workers: list[Worker], rollout: str, summary: Table) -> bool:
    outcomes = session.each(workers, lambda w: _log_and_exit(session, w, target))
    passed = True
    for o in outcomes:
        checks = check_smoke(*o.value, rollout) if o.ok else [Check("read log", False, o.error or "")]
        for check in checks:
            summary.add_row(check.name, o.worker.label, "[green]pass[/]" if check.passed else "[red]FAIL[/]",
                            shown(check.detail))
            passed = passed and check.passed
    return passed


def register(app: typer.Typer) -> None:
    app.command()(smoke)

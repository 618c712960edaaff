"""`tpuctl sync`: every selected worker's checkout becomes exactly origin/BRANCH."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from tpuctl.commands.common import (
    DryRunOpt,
    WorkerOpt,
    fail_unless,
    open_session,
    print_dry_run,
    report_errors,
    workers_of,
)
from tpuctl.config import Target
from tpuctl.console import BadInput, console, printable, shown
from tpuctl.pairs import values_of
from tpuctl.remote.git import SyncResult, apply_script, parse_sync, preflight_script
from tpuctl.workers import Worker

ForceOpt = Annotated[bool, typer.Option("--force", help="Sync even while a run is alive in the checkout (warns).")]


def sync(ctx: typer.Context, worker: WorkerOpt = "all", force: ForceOpt = False, dry_run: DryRunOpt = False) -> None:
    """Clone if missing, fetch, check out and hard-reset to origin/BRANCH, clean (keeping logs/ and the env files)."""
    target, workers = workers_of(ctx, worker)
    if not target.repo_url:
        raise BadInput("repo_url is not set: add repo_url to the target in tpuctl.toml or set TPUCTL_REPO_URL")
    now = datetime.now(UTC)
    stash_label, stamp = "tpuctl sync " + now.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y%m%dT%H%M%SZ")
    if dry_run:
        print_dry_run(target, [(w, script) for w in workers
                               for script in (preflight_script(target, force), apply_script(target, stash_label, stamp))])
        return
    with open_session(target) as session:
        fail_unless(run_sync(session, target, workers, stash_label, stamp, force))


def run_sync(session, target: Target, workers: list[Worker], stash_label: str, stamp: str, force: bool = False) -> bool:
    """Preflight on all workers, then sync all; True when every worker ends on the same commit."""
    checks = session.each(workers, lambda w: session.exec(w, preflight_script(target, force), "sync preflight").out)
    if not report_errors(checks):
        return False
    for check in checks:
        for line in values_of(check.value, "warning"):
            console.print(f"[yellow]{check.worker.label} warning:[/] {shown(line)}", highlight=False)
    problems = [f"worker {c.worker.index}: {line}" for c in checks for line in values_of(c.value, "problem")]
    if problems:
        raise BadInput("sync refused: " + "; ".join(problems) + " (nothing was changed)")
    outcomes = session.each(workers, lambda w: _apply(session, target, w, stash_label, stamp))
    for outcome in outcomes:
        if outcome.ok:
            _print_synced(outcome.worker, outcome.value)
    ok = report_errors(outcomes)
    heads = {o.value.head for o in outcomes if o.ok}
    if len(heads) > 1:
        console.print(f"[red]workers differ:[/] {shown(', '.join(sorted(h[:7] for h in heads)))}")
        return False
    if ok:
        console.print(f"[green]{len(workers)} worker(s) at {shown(heads.pop()[:7])}[/] ({shown(target.branch)})")
    return ok


def _apply(session, target: Target, worker: Worker, stash_label: str, stamp: str) -> SyncResult:
    return parse_sync(session.exec(worker, apply_script(target, stash_label, stamp), "sync", timeout=600).out)


def _print_synced(worker: Worker, result: SyncResult) -> None:
    notes = [f"local changes stashed as {result.stashed}: git stash list"] if result.stashed else []
    notes += [f"worker-only commits kept as {backup}" for backup in result.backups]
    note = "".join(f"  ({text})" for text in notes)
    console.out(printable(f"{worker.label} {worker.address}  {result.short_head}  {result.status}{note}"), highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(sync)

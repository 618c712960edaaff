"""`tpuctl sync`: every selected worker's checkout becomes exactly origin/BRANCH."""

from __future__ import annotations

from datetime import UTC, datetime

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
from tpuctl.console import BadInput, console
from tpuctl.remote.git import SyncResult, apply_script, parse_fields, parse_sync, preflight_script
from tpuctl.workers import Worker


def sync(ctx: typer.Context, worker: WorkerOpt = "all", dry_run: DryRunOpt = False) -> None:
    """Clone if missing, fetch, check out and hard-reset to origin/BRANCH, clean (keeping logs/ and .env)."""
    target, workers = workers_of(ctx, worker)
    if not target.repo_url:
        raise BadInput("repo_url is not set: add repo_url to the target in tpuctl.toml or set TPUCTL_REPO_URL")
    stash_label = "tpuctl sync " + datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if dry_run:
        print_dry_run(target, [(w, apply_script(target, stash_label)) for w in workers])
        return
    with open_session(target) as session:
        fail_unless(run_sync(session, target, workers, stash_label))


def run_sync(session, target: Target, workers: list[Worker], stash_label: str) -> bool:
    """Preflight on all workers, then sync all; True when every worker ends on the same commit."""
    checks = session.each(workers, lambda w: parse_fields(session.exec(w, preflight_script(target), "sync preflight").out))
    if not report_errors(checks):
        return False
    problems = [f"worker {c.worker.index}: {c.value['problem']}" for c in checks if "problem" in c.value]
    if problems:
        raise BadInput("; ".join(problems) + " (nothing was changed)")
    outcomes = session.each(workers, lambda w: _apply(session, target, w, stash_label))
    for outcome in outcomes:
        if outcome.ok:
            _print_synced(outcome.worker, outcome.value)
    ok = report_errors(outcomes)
    heads = {o.value.head for o in outcomes if o.ok}
    if len(heads) > 1:
        console.print(f"[red]workers differ:[/] {', '.join(sorted(h[:7] for h in heads))}")
        return False
    if ok:
        console.print(f"[green]{len(workers)} worker(s) at {heads.pop()[:7]}[/] ({target.branch})")
    return ok


def _apply(session, target: Target, worker: Worker, stash_label: str) -> SyncResult:
    return parse_sync(session.exec(worker, apply_script(target, stash_label), "sync", timeout=600).out)


def _print_synced(worker: Worker, result: SyncResult) -> None:
    note = f"  (local changes stashed as {result.stashed}: git stash list)" if result.stashed else ""
    console.out(f"{worker.label} {worker.address}  {result.short_head}  {result.status}{note}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(sync)

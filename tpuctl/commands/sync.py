"""`tpuctl sync`: every selected worker's checkout becomes exactly origin/BRANCH (tpuctl.ops.sync)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from tpuctl.commands.common import DryRunOpt, WorkerOpt, fail_unless, open_session, workers_of
from tpuctl.commands.views import print_dry_run, show_sync
from tpuctl.console import BadInput

ForceOpt = Annotated[bool, typer.Option("--force", help="Sync even while a run is alive in the checkout (warns).")]


def sync(ctx: typer.Context, worker: WorkerOpt = "all", force: ForceOpt = False, dry_run: DryRunOpt = False) -> None:
    """Clone if missing, fetch, check out and hard-reset to origin/BRANCH, clean (keeping logs/ and the env files)."""
    from tpuctl.ops.sync import SyncLabels, sync_plan
    from tpuctl.ops.sync import sync as sync_workers

    target, workers = workers_of(ctx, worker)
    if not target.repo_url:
        raise BadInput("repo_url is not set: add repo_url to the target in tpuctl.toml or set TPUCTL_REPO_URL")
    labels = SyncLabels.at(datetime.now(UTC), "sync")
    if dry_run:
        print_dry_run(target, sync_plan(target, workers, labels, force))
        return
    with open_session(target) as session:
        fail_unless(show_sync(sync_workers(session, target, workers, labels, force), target))


def register(app: typer.Typer) -> None:
    app.command()(sync)

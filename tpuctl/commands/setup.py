"""`tpuctl setup`: the training environment on every worker from the synced checkout, then verify-env
(tpuctl.ops.setup, tpuctl.ops.verify)."""

from __future__ import annotations

import typer

from tpuctl.commands.common import DryRunOpt, WorkerOpt, expected_backend, fail_unless, open_session, workers_of
from tpuctl.commands.verify import ExpectBackendOpt
from tpuctl.commands.views import print_dry_run, report_errors, show_prepared, show_verify


def setup(ctx: typer.Context, worker: WorkerOpt = "all", expect_backend: ExpectBackendOpt = None,
          dry_run: DryRunOpt = False) -> None:
    """Create the venv (Python from uv) or use the conda env, install the project with its extra, then verify-env."""
    from tpuctl.ops.setup import setup as set_up
    from tpuctl.ops.setup import setup_plan
    from tpuctl.ops.verify import verify

    target, workers = workers_of(ctx, worker)
    backend = expected_backend(expect_backend, target.expect_backend)
    if dry_run:
        print_dry_run(target, setup_plan(target, workers))
        return
    with open_session(target) as session:
        prepared = report_errors(set_up(session, target, workers, on_done=show_prepared))
        fail_unless(prepared and show_verify(verify(session, target, workers, backend)))


def register(app: typer.Typer) -> None:
    app.command()(setup)

"""`tpuctl verify-env`: versions, backend and devices on every worker, checked against the pins (tpuctl.ops.verify)."""

from __future__ import annotations

from typing import Annotated

import typer

from tpuctl.commands.common import JsonOpt, WorkerOpt, expected_backend, fail_unless, open_session, workers_of
from tpuctl.commands.views import show_verify

ExpectBackendOpt = Annotated[str | None, typer.Option("--expect-backend", help="Expected jax backend (tpu, cpu, gpu); "
                                                                              "default: the target's expect_backend.")]


def verify_env(ctx: typer.Context, worker: WorkerOpt = "all", as_json: JsonOpt = False,
               expect_backend: ExpectBackendOpt = None) -> None:
    """Probe Python, jax, jaxlib, libtpu and sglang-jax on each worker; fail on a wrong backend or pin, or a mismatch."""
    from tpuctl.ops.verify import verify

    target, workers = workers_of(ctx, worker)
    backend = expected_backend(expect_backend, target.expect_backend)
    with open_session(target) as session:
        fail_unless(show_verify(verify(session, target, workers, backend), as_json))


def register(app: typer.Typer) -> None:
    app.command("verify-env")(verify_env)

"""`tpuctl verify-env`: versions, backend and devices on every worker, checked against the pins."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from tpuctl.commands.common import JsonOpt, WorkerOpt, fail_unless, open_session, report_errors, workers_of
from tpuctl.config import BACKENDS, Target
from tpuctl.console import BadInput, TpuctlError, console, shown
from tpuctl.remote.probe import VERSION_KEYS, EnvReport, check_envs, parse_probe, probe_script
from tpuctl.workers import Worker

PROBE_TIMEOUT_S = 300.0


def probe(session, target: Target, worker: Worker) -> dict[str, object]:
    result = session.exec(worker, probe_script(target), "the environment probe", timeout=PROBE_TIMEOUT_S)
    try:
        return parse_probe(result.out)
    except ValueError:
        raise TpuctlError(f"worker {worker.index}: the environment probe printed no result: {result.failure}") from None


def run_verify(session, target: Target, workers: list[Worker], expect_backend: str,
               as_json: bool = False) -> bool:
    outcomes = session.each(workers, lambda w: probe(session, target, w))
    reached = report_errors(outcomes) if not as_json else all(o.ok for o in outcomes)
    report = check_envs({o.worker.index: o.value for o in outcomes if o.ok}, expect_backend, target.expect_versions)
    if as_json:
        console.print_json(json.dumps({
            "ok": reached and report.ok, "expect_backend": expect_backend, "pins": dict(target.expect_versions),
            "workers": [{"worker": o.worker.index, "address": o.worker.address, "info": o.value, "error": o.error}
                        for o in outcomes],
            "problems": report.problems}))
    else:
        _print_table(workers, report)
    return reached and report.ok


def _print_table(workers: list[Worker], report: EnvReport) -> None:
    table = Table("worker", *VERSION_KEYS, "backend", "devices (local/global)", "kind")
    for worker in workers:
        info = report.infos.get(worker.index)
        if info is None:
            table.add_row(worker.label, *["-"] * (len(VERSION_KEYS) + 3))
            continue
        devices = f"{info.get('local_device_count', '-')}/{info.get('device_count', '-')}"
        table.add_row(worker.label, *(shown(str(info.get(k) or "-")) for k in VERSION_KEYS),
                      shown(str(info.get("backend", "-"))), shown(devices), shown(str(info.get("device_kind", "-"))))
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]x[/] {shown(problem)}", highlight=False)
    if report.ok:
        console.print("[green]environment ok[/]")


def verify_env(ctx: typer.Context, worker: WorkerOpt = "all", as_json: JsonOpt = False,
               expect_backend: Annotated[str | None, typer.Option(help="Expected jax backend (tpu, cpu, gpu); "
                                                                     "default: the target's expect_backend.")] = None) -> None:
    """Probe Python, jax, jaxlib, libtpu and sglang-jax on each worker; fail on a wrong backend or pin, or a mismatch."""
    target, workers = workers_of(ctx, worker)
    backend = expect_backend or target.expect_backend
    if backend not in BACKENDS:
        raise BadInput(f"bad --expect-backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    with open_session(target) as session:
        fail_unless(run_verify(session, target, workers, backend, as_json))


def register(app: typer.Typer) -> None:
    app.command("verify-env")(verify_env)

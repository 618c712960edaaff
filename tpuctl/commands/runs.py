"""Detached runs on the workers: `launch`, `status`, `stop`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from tpuctl.commands.common import (
    DEFAULT_RUN,
    DryRunOpt,
    JsonOpt,
    NameOpt,
    WorkerOpt,
    fail_unless,
    open_session,
    print_dry_run,
    report_errors,
    workers_of,
)
from tpuctl.config import Target
from tpuctl.console import BadInput, TpuctlError, console
from tpuctl.remote.git import parse_fields
from tpuctl.remote.runs import (
    LaunchPlan,
    RunStatus,
    check_run_name,
    launch_preflight_script,
    launch_script,
    parse_env_assignments,
    parse_status,
    status_script,
    stop_script,
)
from tpuctl.workers import Worker

CommandArg = Annotated[list[str] | None, typer.Argument(help="The command to run, after `--`.")]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE for the run (not secrets: use .env).")]


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def distributed_env(target: Target, workers: list[Worker]) -> dict[int, dict[str, str]]:
    """What jax.distributed.initialize() needs on each host of a multi-host launch; nothing for one host."""
    if len(workers) < 2:
        return {w.index: {} for w in workers}
    coordinator = f"{workers[0].peer_address or workers[0].host}:{target.coordinator_port}"
    return {w.index: {"JAX_COORDINATOR_ADDRESS": coordinator, "JAX_NUM_PROCESSES": str(len(workers)),
                      "JAX_PROCESS_ID": str(rank)} for rank, w in enumerate(workers)}


def run_launch(session, target: Target, workers: list[Worker], plan: LaunchPlan) -> bool:
    """Refuse (changing nothing) if any worker is not ready, else start the run on every worker."""
    checks = session.each(workers, lambda w: session.exec(w, launch_preflight_script(target, plan.name), "launch preflight").out)
    if not report_errors(checks):
        return False
    problems = [f"worker {c.worker.index}: {line[8:]}" for c in checks for line in c.value.splitlines()
                if line.startswith("problem=")]
    for check in checks:
        for line in check.value.splitlines():
            if line.startswith("warning="):
                console.print(f"[yellow]{check.worker.label} warning:[/] {line[8:]}", highlight=False)
    if problems:
        raise BadInput("launch refused: " + "; ".join(problems))
    envs = distributed_env(target, workers)
    outcomes = session.each(workers, lambda w: _start(session, target, w, plan, envs[w.index]))
    for outcome in outcomes:
        if outcome.ok:
            console.out(f"{outcome.worker.label} {outcome.worker.address}  started pid {outcome.value['pid']}  "
                        f"log {outcome.value['log']}", highlight=False)
    return report_errors(outcomes)


def _start(session, target: Target, worker: Worker, plan: LaunchPlan, env: dict[str, str]) -> dict[str, str]:
    result = session.exec(worker, launch_script(target, plan, worker.index, env), "launch")
    found = parse_fields(result.out)
    if not found.get("pid"):
        raise TpuctlError(f"worker {worker.index}: the run did not start (no pid file after 5 s): {result.failure}")
    return found


def launch(ctx: typer.Context, command: CommandArg = None, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all",
           env: EnvOpt = None, dry_run: DryRunOpt = False) -> None:
    """Start `-- CMD...` detached (setsid nohup) on the workers; logs/<name>_<stamp>.{log,exit,pid,meta.json}."""
    if not command:
        raise BadInput("no command to launch: give it after `--`, e.g. tpuctl launch -- trainer --preset smoke")
    plan = LaunchPlan(check_run_name(name), utc_stamp(), tuple(command), parse_env_assignments(env or []))
    target, workers = workers_of(ctx, worker)
    if dry_run:
        envs = distributed_env(target, workers)
        print_dry_run(target, [(w, launch_script(target, plan, w.index, envs[w.index])) for w in workers])
        return
    with open_session(target) as session:
        fail_unless(run_launch(session, target, workers, plan))


def read_status(session, target: Target, worker: Worker, name: str) -> RunStatus:
    return parse_status(session.exec(worker, status_script(target, name), "status").out)


def status(ctx: typer.Context, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all", as_json: JsonOpt = False) -> None:
    """Per worker: running / exited N / vanished / preempted / none, and the last step line's fields."""
    check_run_name(name)
    target, workers = workers_of(ctx, worker, require_ready=False)
    with open_session(target) as session:
        outcomes = session.each(workers, lambda w: read_status(session, target, w, name))
    preempted = preempted_workers(target, outcomes)
    if as_json:
        console.print_json(json.dumps([{"worker": o.worker.index, "address": o.worker.address,
                                        **(o.value.as_json() if o.ok else {"state": "unreachable", "error": o.error}),
                                        **({"state": "preempted"} if o.worker.index in preempted else {})}
                                       for o in outcomes]))
        fail_unless(all(o.ok or o.worker.index in preempted for o in outcomes))
        return
    table = Table("worker", "address", "state", "step", "loss", "entropy", "reward_mean", "dt (s)", "log")
    for o in outcomes:
        step = o.value.step if o.ok else {}
        state = ("[yellow]preempted[/]" if o.worker.index in preempted else
                 o.value.label if o.ok else "[red]unreachable[/]")
        table.add_row(o.worker.label, o.worker.address, state, *(step.get(k, "") for k in
                      ("step", "loss", "entropy", "reward_mean", "dt")), o.value.log if o.ok else "")
    console.print(table)
    fail_unless(report_errors([o for o in outcomes if o.worker.index not in preempted]))


def preempted_workers(target: Target, outcomes) -> set[int]:
    """Workers whose run vanished, or who do not answer, on a TPU VM the cloud preempted or terminated.

    Asks the TPU API only when something vanished and the target names a TPU VM.
    """
    suspects = {o.worker.index for o in outcomes if not o.ok or o.value.state == "vanished"}
    if not suspects or not target.name:
        return set()
    from tpuctl.gcp.discovery import PREEMPTED_STATES, node_state

    return suspects if node_state(target) in PREEMPTED_STATES else set()


def run_stop(session, target: Target, workers: list[Worker], name: str, grace_s: float) -> bool:
    outcomes = session.each(workers, lambda w: parse_fields(
        session.exec(w, stop_script(target, name, grace_s), "stop", timeout=grace_s + 60).out))
    words = {"TERM": "stopped (TERM)", "KILL": f"killed (KILL after {grace_s:g} s)", "none": "was not running"}
    for o in outcomes:
        if o.ok:
            what = words.get(o.value.get("signal", ""), f"no run named {name!r}")
            console.out(f"{o.worker.label} {o.worker.address}  {what}; lock file {o.value.get('lock', '?')}",
                        highlight=False)
    return report_errors(outcomes)


def stop(ctx: typer.Context, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all",
         grace: Annotated[float, typer.Option(help="Seconds between TERM and KILL.", min=0)] = 30.0,
         dry_run: DryRunOpt = False) -> None:
    """TERM the run's process group, wait, then KILL; then remove a stale libtpu lock file."""
    check_run_name(name)
    target, workers = workers_of(ctx, worker)
    if dry_run:
        print_dry_run(target, [(w, stop_script(target, name, grace)) for w in workers])
        return
    with open_session(target) as session:
        fail_unless(run_stop(session, target, workers, name, grace))


def register(app: typer.Typer) -> None:
    app.command()(launch)
    app.command()(status)
    app.command()(stop)

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
    Note,
    WorkerOpt,
    fail_unless,
    open_session,
    print_dry_run,
    report_errors,
    workers_of,
)
from tpuctl.config import Target
from tpuctl.console import BadInput, TpuctlError, console, err_console, printable, shown
from tpuctl.pairs import fields, values_of
from tpuctl.remote.git import LOGS_DIR
from tpuctl.remote.runs import (
    LaunchPlan,
    RunStatus,
    check_run_name,
    launch_preflight_script,
    launch_script,
    parse_env_assignments,
    parse_status,
    runner_script,
    status_script,
    stop_script,
)
from tpuctl.workers import Worker

CommandArg = Annotated[list[str] | None, typer.Argument(help="The command to run, after `--`.")]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE for the run (not secrets: use .env).")]


def utc_stamp() -> str:
    """A run's UTC start, to the millisecond (ISO 8601 basic): a stop and a relaunch in the same second
    get two stamps, so the run files' noclobber guard only ever stops a real collision."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"


def distributed_env(target: Target, workers: list[Worker]) -> dict[int, dict[str, str]]:
    """What jax.distributed.initialize() needs on each host of a multi-host launch; nothing for one host."""
    if len(workers) < 2:
        return {w.index: {} for w in workers}
    coordinator = f"{workers[0].peer_address or workers[0].host}:{target.coordinator_port}"
    return {w.index: {"JAX_COORDINATOR_ADDRESS": coordinator, "JAX_NUM_PROCESSES": str(len(workers)),
                      "JAX_PROCESS_ID": str(rank)} for rank, w in enumerate(workers)}


def launch_scripts(target: Target, workers: list[Worker], plan: LaunchPlan) -> list[tuple[Worker, str | Note]]:
    """Every script a launch runs, per worker and in order, for --dry-run (the runner decoded too)."""
    envs = distributed_env(target, workers)
    scripts: list[tuple[Worker, str | Note]] = [(w, launch_preflight_script(target, plan.name)) for w in workers]
    for w in workers:
        scripts += [(w, launch_script(target, plan, w.index, envs[w.index])),
                    (w, Note(f"# the runner above, decoded: {LOGS_DIR}/{plan.base}.sh on worker {w.index}")),
                    (w, Note(runner_script(target, plan, envs[w.index])))]
    return scripts


def run_launch(session, target: Target, workers: list[Worker], plan: LaunchPlan) -> bool:
    """Refuse (changing nothing) if any worker is not ready, else start the run on every worker.

    The first worker starts alone: a launch that loses a race for the name there (two launches at
    once) is refused before it touches any other worker.
    """
    checks = session.each(workers, lambda w: session.exec(w, launch_preflight_script(target, plan.name), "launch preflight").out)
    if not report_errors(checks):
        return False
    problems = [f"worker {c.worker.index}: {line}" for c in checks for line in values_of(c.value, "problem")]
    for check in checks:
        for line in values_of(check.value, "warning"):
            console.print(f"[yellow]{check.worker.label} warning:[/] {shown(line)}", highlight=False)
    if problems:
        raise BadInput("launch refused: " + "; ".join(problems))
    envs = distributed_env(target, workers)
    first = session.each(workers[:1], lambda w: _start(session, target, w, plan, envs[w.index]))
    if first[0].ok and first[0].value.get("refused"):
        raise BadInput(f"launch refused: worker {workers[0].index}: {first[0].value['refused']}")
    if not first[0].ok:
        return report_errors(first)
    outcomes = first + session.each(workers[1:], lambda w: _start(session, target, w, plan, envs[w.index]))
    for outcome in outcomes:
        if outcome.ok and not outcome.value.get("refused"):
            console.out(printable(f"{outcome.worker.label} {outcome.worker.address}  started pid {outcome.value['pid']}  "
                                  f"log {outcome.value['log']}"), highlight=False)
    refused = [f"worker {o.worker.index}: {o.value['refused']}" for o in outcomes if o.ok and o.value.get("refused")]
    for line in refused:
        err_console.print(f"[red]refused:[/] {shown(line)}")
    return report_errors(outcomes) and not refused


def _start(session, target: Target, worker: Worker, plan: LaunchPlan, env: dict[str, str]) -> dict[str, str]:
    result = session.exec(worker, launch_script(target, plan, worker.index, env), "launch")
    found = fields(result.out)
    if not found.get("pid") and not found.get("refused"):
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
        print_dry_run(target, launch_scripts(target, workers, plan))
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
                 shown(o.value.label) if o.ok else "[red]unreachable[/]")
        table.add_row(o.worker.label, o.worker.address, state, *(shown(step.get(k, "")) for k in
                      ("step", "loss", "entropy", "reward_mean", "dt")), shown(o.value.log) if o.ok else "")
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


STOP_WORDS = {"TERM": "stopped (TERM)", "none": "was not running",
              "unverified": "NOT signalled: its lock is held, but no process could be verified as the run "
                            "(pid file or identity changed); check the worker with ps"}


def run_stop(session, target: Target, workers: list[Worker], name: str, grace_s: float) -> bool:
    outcomes = session.each(workers, lambda w: session.exec(w, stop_script(target, name, grace_s), "stop",
                                                            timeout=grace_s + 60).out)
    words = {**STOP_WORDS, "KILL": f"killed (KILL after {grace_s:g} s)"}
    unverified = False
    for o in outcomes:
        if o.ok:
            signals = values_of(o.value, "signal")
            what = words.get(signals[-1], signals[-1]) if signals else f"no run named {name!r}"
            unverified = unverified or "unverified" in signals
            console.out(printable(f"{o.worker.label} {o.worker.address}  {what}; lock file "
                                  f"{fields(o.value).get('lock', '?')}"), highlight=False)
    return report_errors(outcomes) and not unverified


def stop(ctx: typer.Context, name: NameOpt = DEFAULT_RUN, worker: WorkerOpt = "all",
         grace: Annotated[float, typer.Option(help="Seconds between TERM and KILL (0 or more).")] = 30.0,
         dry_run: DryRunOpt = False) -> None:
    """TERM the run's verified process group, wait, then KILL; then remove a stale libtpu lock file."""
    check_run_name(name)
    if not 0 <= grace <= 86400:
        raise BadInput(f"bad --grace {grace:g}: expected seconds from 0 to 86400")
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

"""Launch: start a command detached on every worker, one run per name, with the pushed env values.

A read-only preflight (scripts/launch_preflight.sh) runs on every worker first; then the first worker
starts alone (scripts/launch.sh: take the run's lock, create its files with noclobber, write the
runner from base64, start it with `setsid nohup`), so a launch that loses a race for the name there
is refused before it touches any other worker; then the others start. The runner
(scripts/runner.sh) loads the env values, activates Python, clears a stale libtpu lock, runs the
command and always writes the exit file. On several workers, each gets the JAX_* variables that
jax.distributed.initialize() reads.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tpuctl.config import Target
from tpuctl.console import BadInput, TpuctlError
from tpuctl.ops.common import Note, Preflight, Step, preflight
from tpuctl.ops.runs import LIBTPU_LOCKFILE, LOGS_DIR, TPU_DEVICE_PATTERNS, python_env
from tpuctl.pairs import SHELL_NAME, fields, leading_assignments, parse_pairs
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker


def parse_env_options(pairs: Sequence[str]) -> dict[str, str]:
    """`--env KEY=VALUE` options (plain settings, not secrets: those belong in the .env)."""
    return parse_pairs(pairs, "--env", " with KEY a shell variable name", SHELL_NAME)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything a launch needs, identical for all workers but the per-worker environment."""

    name: str
    stamp: str
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.argv:
            raise BadInput(f"no command to launch after the variable assignments {shlex.join(self.command)!r}")

    @property
    def base(self) -> str:
        return f"{self.name}_{self.stamp}"

    @property
    def assignments(self) -> dict[str, str]:
        """Leading `NAME=value` words (as in `STEPS=1 python train.py`): the command's own environment."""
        return leading_assignments(self.command)

    @property
    def argv(self) -> Sequence[str]:
        return self.command[len(self.assignments):]


def distributed_env(target: Target, workers: list[Worker]) -> dict[int, dict[str, str]]:
    """What jax.distributed.initialize() needs on each host of a multi-host launch; nothing for one host."""
    if len(workers) < 2:
        return {w.index: {} for w in workers}
    coordinator = f"{workers[0].peer_address or workers[0].host}:{target.coordinator_port}"
    return {w.index: {"JAX_COORDINATOR_ADDRESS": coordinator, "JAX_NUM_PROCESSES": str(len(workers)),
                      "JAX_PROCESS_ID": str(rank)} for rank, w in enumerate(workers)}


def launch_preflight_script(target: Target, name: str, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS
                            ) -> RenderedScript:
    """Read-only: `problem=` lines refuse the launch, `warning=` lines are shown."""
    return render("launch_preflight", repo=target.remote_repo, name=name, env_file=target.env_file,
                  device_patterns=device_patterns, **python_env(target))


def _pairs(env: Mapping[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in env.items()]


def runner_script(target: Target, plan: LaunchPlan, worker_env: Mapping[str, str],
                  lockfile: str = LIBTPU_LOCKFILE, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> RenderedScript:
    """The detached runner: load the env values, activate Python, clear a stale lock, run, always write the exit file."""
    env = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **plan.env, **worker_env}
    return render("runner", repo=target.remote_repo, base=f"{LOGS_DIR}/{plan.base}", env_file=target.env_file,
                  run_env=_pairs(env), assignments=_pairs(plan.assignments), argv=list(plan.argv),
                  tpu_lockfile=lockfile, device_patterns=device_patterns, **python_env(target))


def launch_script(target: Target, plan: LaunchPlan, worker_index: int, worker_env: Mapping[str, str],
                  lockfile: str = LIBTPU_LOCKFILE, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> RenderedScript:
    """Takes the run's lock, creates its files (noclobber), writes the runner from base64, starts it detached."""
    meta = {"name": plan.name, "stamp": plan.stamp, "command": list(plan.command), "worker": worker_index,
            "env": dict(plan.env), **({"distributed": dict(worker_env)} if worker_env else {})}
    meta_prefix = json.dumps(meta)[:-1]  # the git HEAD and start time are added on the worker
    runner = runner_script(target, plan, worker_env, lockfile, device_patterns)
    return render("launch", repo=target.remote_repo, name=plan.name, base=f"{LOGS_DIR}/{plan.base}",
                  meta=meta_prefix, runner=base64.b64encode(runner.encode()).decode())


def launch_plan(target: Target, workers: list[Worker], plan: LaunchPlan) -> list[Step]:
    """Every script a launch runs, per worker and in order, for --dry-run (the runner decoded too)."""
    envs = distributed_env(target, workers)
    steps: list[Step] = [(w, launch_preflight_script(target, plan.name)) for w in workers]
    for w in workers:
        steps += [(w, launch_script(target, plan, w.index, envs[w.index])),
                  (w, Note(f"# the runner above, decoded: {LOGS_DIR}/{plan.base}.sh on worker {w.index}")),
                  (w, runner_script(target, plan, envs[w.index]))]
    return steps


@dataclass(frozen=True)
class Started:
    """What one worker's launch script said: the run's pid and log, or why it refused to start it."""

    pid: str = ""
    log: str = ""
    refused: str = ""


@dataclass(frozen=True)
class LaunchReport:
    preflight: Preflight
    starts: list[Outcome[Started]] = field(default_factory=list)  # only the first worker's when it did not start

    @property
    def refused(self) -> list[str]:
        """`worker N: <why>` for each worker whose launch script refused to start the run."""
        return [f"worker {o.worker.index}: {o.value.refused}" for o in self.starts if o.ok and o.value.refused]

    @property
    def refused_first(self) -> str:
        """`worker N: <why>` when the first worker refused the run (a lost race for its name): then nothing
        started anywhere and nothing changed."""
        first = self.starts[0] if self.starts else None
        return f"worker {first.worker.index}: {first.value.refused}" if first and first.ok and first.value.refused else ""

    @property
    def ok(self) -> bool:
        started = len(self.starts) == len(self.preflight.outcomes)
        return self.preflight.passed and started and all(o.ok for o in self.starts) and not self.refused


def _start(session: Session, target: Target, worker: Worker, plan: LaunchPlan, env: Mapping[str, str]) -> Started:
    result = session.exec(worker, launch_script(target, plan, worker.index, env), "launch")
    found = fields(result.out)
    if not found.get("pid") and not found.get("refused"):
        raise TpuctlError(f"worker {worker.index}: the run did not start (no pid file after 5 s): {result.failure}")
    return Started(found.get("pid", ""), found.get("log", ""), found.get("refused", ""))


def launch(session: Session, target: Target, workers: list[Worker], plan: LaunchPlan) -> LaunchReport:
    """Start the run on every worker, or nowhere when the preflight refuses it or the first worker does."""
    checked = preflight(session, workers, lambda w: launch_preflight_script(target, plan.name), "launch preflight")
    if not checked.passed:
        return LaunchReport(checked)
    envs = distributed_env(target, workers)

    def start(worker: Worker) -> Started:
        return _start(session, target, worker, plan, envs[worker.index])

    first = session.each(workers[:1], start)
    if not first[0].ok or first[0].value.refused:
        return LaunchReport(checked, first)
    return LaunchReport(checked, first + session.each(workers[1:], start))

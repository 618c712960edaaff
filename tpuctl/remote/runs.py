"""Detached runs on a worker: launch, status and stop (the scripts are in scripts/, quoted by render).

A run named NAME started at STAMP (UTC, to the millisecond: 20250101T120000.123Z) owns, inside the checkout:

    logs/NAME_STAMP.sh         the runner script (no secrets: they are loaded at run time)
    logs/NAME_STAMP.log        stdout and stderr of the command
    logs/NAME_STAMP.pid        the runner's pid, which is also the run's process group (setsid)
    logs/NAME_STAMP.identity   the boot id and the runner's start time: a pid alone is no identity
    logs/NAME_STAMP.exit       the exit code, written atomically on every exit, failure included
    logs/NAME_STAMP.meta.json  command, git HEAD, start time, worker
    logs/NAME_latest.*         symlinks with RELATIVE targets to the newest run's files
    logs/NAME.lock             flock'ed from launch until the run's last process ends: one run per name

The runner is started with `setsid nohup` and all three standard streams redirected, so it
survives the SSH session and the launching command returns at once.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tpuctl.config import Target
from tpuctl.console import BadInput
from tpuctl.pairs import SHELL_NAME, fields, leading_assignments, parse_pairs
from tpuctl.remote.git import LOGS_DIR
from tpuctl.remote.render import render

LIBTPU_LOCKFILE = "/tmp/libtpu_lockfile"
# Device files a process holds while it owns TPU chips (v4/v5 expose /dev/accel*, v5e/v6e VFIO).
TPU_DEVICE_PATTERNS = ("/dev/accel*", "/dev/vfio/[0-9]*")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
_STEP_FIELD = re.compile(r"(\w+)=(\S+)")


def check_run_name(name: str) -> str:
    if not _RUN_NAME.fullmatch(name):
        raise BadInput(f"bad run name {name!r}: expected letters, digits, '.' and '-' (at most 64, no '_')")
    return name


def parse_env_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """`--env KEY=VALUE` options (plain settings, not secrets: those belong in the .env)."""
    return parse_pairs(pairs, "--env", " with KEY a shell variable name", SHELL_NAME)


def _python_env(target: Target) -> dict[str, str]:
    return {"venv": target.venv, "conda_env": target.conda_env}


def launch_preflight_script(target: Target, name: str, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> str:
    """Read-only: `problem=` lines refuse the launch, `warning=` lines are shown."""
    return render("launch_preflight", repo=target.remote_repo, name=name, env_file=target.env_file,
                  device_patterns=device_patterns, **_python_env(target))


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


def _pairs(env: Mapping[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in env.items()]


def runner_script(target: Target, plan: LaunchPlan, worker_env: Mapping[str, str],
                  lockfile: str = LIBTPU_LOCKFILE, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> str:
    """The detached runner: load the env values, activate Python, clear a stale lock, run, always write the exit file."""
    env = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **plan.env, **worker_env}
    return render("runner", repo=target.remote_repo, base=f"{LOGS_DIR}/{plan.base}", env_file=target.env_file,
                  run_env=_pairs(env), assignments=_pairs(plan.assignments), argv=list(plan.argv),
                  tpu_lockfile=lockfile, device_patterns=device_patterns, **_python_env(target))


def launch_script(target: Target, plan: LaunchPlan, worker_index: int, worker_env: Mapping[str, str],
                  lockfile: str = LIBTPU_LOCKFILE, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> str:
    """Takes the run's lock, creates its files (noclobber), writes the runner from base64, starts it detached."""
    meta = {"name": plan.name, "stamp": plan.stamp, "command": list(plan.command), "worker": worker_index,
            "env": dict(plan.env), **({"distributed": dict(worker_env)} if worker_env else {})}
    meta_prefix = json.dumps(meta)[:-1]  # the git HEAD and start time are added on the worker
    runner = runner_script(target, plan, worker_env, lockfile, device_patterns)
    return render("launch", repo=target.remote_repo, name=plan.name, base=f"{LOGS_DIR}/{plan.base}",
                  meta=meta_prefix, runner=base64.b64encode(runner.encode()).decode())


@dataclass(frozen=True)
class RunStatus:
    state: str  # running | exited | vanished | none
    exit_code: int | None = None
    pid: int | None = None
    log: str = ""
    step: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"exited {self.exit_code}" if self.state == "exited" else self.state

    def as_json(self) -> dict[str, object]:
        return {"state": self.state, "exit_code": self.exit_code, "pid": self.pid, "log": self.log,
                "step": dict(self.step), "meta": dict(self.meta)}


def status_script(target: Target, name: str) -> str:
    return render("status", repo=target.remote_repo, name=name)


def parse_step_line(line: str) -> dict[str, str]:
    """`step=3 loss=0.1 entropy=0.2 reward_mean=0.5 dt=1.2s` -> its fields (`dt` keeps no unit)."""
    found = dict(_STEP_FIELD.findall(line[line.find("step="):] if "step=" in line else ""))
    if "dt" in found:
        found["dt"] = found["dt"].removesuffix("s")
    return found


def parse_status(text: str) -> RunStatus:
    found = fields(text)
    state = found.get("state", "vanished")
    if state == "none":
        return RunStatus("none")
    pid = int(found["pid"]) if found.get("pid", "").isdigit() else None
    exit_text = found.get("exit", "").strip()
    exit_code = int(exit_text) if re.fullmatch(r"-?[0-9]{1,9}", exit_text) else None
    try:
        meta = json.loads(found["meta"]) if found.get("meta") else {}
    except json.JSONDecodeError:
        meta = {}
    return RunStatus(state, exit_code, pid, found.get("log", ""), parse_step_line(found.get("step", "")),
                     meta if isinstance(meta, dict) else {})


def stop_script(target: Target, name: str, grace_s: float, lockfile: str = LIBTPU_LOCKFILE,
                device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> str:
    """TERM the run's verified process group, wait up to `grace_s`, then KILL; then clear a stale lock file."""
    return render("stop", repo=target.remote_repo, name=name, ticks=max(1, int(grace_s * 10)),
                  tpu_lockfile=lockfile, device_patterns=device_patterns)

"""Detached runs on a worker: launch, status and stop.

A run named NAME started at STAMP (UTC) owns, inside the checkout:

    logs/NAME_STAMP.sh         the runner script (no secrets: the .env is sourced at run time)
    logs/NAME_STAMP.log        stdout and stderr of the command
    logs/NAME_STAMP.pid        the runner's pid, which is also the run's process group (setsid)
    logs/NAME_STAMP.exit       the exit code, written atomically on every exit, failure included
    logs/NAME_STAMP.meta.json  command, git HEAD, start time, worker
    logs/NAME_latest.*         symlinks with RELATIVE targets to the newest run's files

The runner is started with `setsid nohup` and all three standard streams redirected, so it
survives the SSH session and the launching command returns at once.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tpuctl.config import Target
from tpuctl.console import BadInput
from tpuctl.remote.git import LOGS_DIR, parse_fields
from tpuctl.remote.shell import rpath, script

LIBTPU_LOCKFILE = "/tmp/libtpu_lockfile"
# Device files a process holds while it owns TPU chips (v4/v5 expose /dev/accel*, v5e/v6e VFIO).
TPU_DEVICE_PATTERNS = ("/dev/accel*", "/dev/vfio/[0-9]*")
RUN_FILES = ("log", "exit", "pid", "meta.json")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STEP_FIELD = re.compile(r"(\w+)=(\S+)")


def check_run_name(name: str) -> str:
    if not _RUN_NAME.fullmatch(name):
        raise BadInput(f"bad run name {name!r}: expected letters, digits, '.' and '-' (at most 64, no '_')")
    return name


def parse_env_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """`--env KEY=VALUE` options (plain settings, not secrets: those belong in the .env)."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise BadInput(f"bad --env {pair!r}: expected KEY=VALUE with KEY a shell variable name")
        env[key] = value
    return env


def _holders_function(device_patterns: Sequence[str]) -> str:
    tests = " -o ".join(f"-lname {shlex.quote(pattern)}" for pattern in device_patterns)
    # find exits non-zero when a process vanishes mid-scan; that must not abort a `set -e` script.
    return ("tpu_holders() { { find /proc/[0-9]*/fd -maxdepth 1 \\( " + tests + " \\) -printf '%h\\n' 2>/dev/null"
            " || true; } | cut -d/ -f3 | sort -un | tr '\\n' ' ' | sed 's/ $//'; }")


def _lock_cleanup(lockfile: str, for_log: bool = False) -> list[str]:
    """Remove a stale libtpu lock file, but only when no process holds the TPU devices.

    Reports `lock=...` fields for tpuctl to parse, or (`for_log`) a line in the run's log when
    the lock file was there at all.
    """
    lock = shlex.quote(lockfile)
    removed, kept = (f"tpuctl: removed stale {lockfile}", f"tpuctl: kept {lockfile}: the TPU is held by pid(s) $held") \
        if for_log else ("lock=removed", "lock=kept (held by $held)")
    return [
        f"if [ -e {lock} ]; then held=$(tpu_holders)",
        f"  if [ -z \"$held\" ]; then rm -f {lock}; echo \"{removed}\"; else echo \"{kept}\"; fi",
        "fi" if for_log else "else echo 'lock=absent'; fi",
    ]


def _alive_function() -> str:
    # The pid is the run's process group (setsid): the run is alive while any member is.
    return 'alive() { [ -n "$1" ] && kill -0 -- "-$1" 2>/dev/null; }'


def activation_lines(target: Target) -> list[str]:
    """Shell lines that activate the target's Python environment on the worker, or fail loudly."""
    if target.venv:
        venv = rpath(target.venv)
        return [f"[ -f {venv}/bin/activate ] || {{ echo \"venv {target.venv} not found\" >&2; exit 98; }}",
                f". {venv}/bin/activate"]
    if target.conda_env:
        env = shlex.quote(target.conda_env)
        return [
            'for base in "$(conda info --base 2>/dev/null)" "$HOME/miniconda3" "$HOME/anaconda3" /opt/conda; do',
            '  if [ -n "$base" ] && [ -f "$base/etc/profile.d/conda.sh" ]; then . "$base/etc/profile.d/conda.sh"; break; fi',
            "done",
            f"conda activate {env} || {{ echo \"conda env {target.conda_env} not found\" >&2; exit 98; }}",
        ]
    return []


def launch_preflight_script(target: Target, name: str, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> str:
    """Read-only: `problem=` lines refuse the launch, `warning=` lines are shown."""
    env_file = rpath(target.env_file)
    return script(
        f"repo={rpath(target.remote_repo)}", f"name={shlex.quote(name)}",
        _alive_function(), _holders_function(device_patterns),
        'cd "$repo" 2>/dev/null || { echo "problem=no checkout at $repo: run tpuctl sync first"; exit 0; }',
        f'latest="{LOGS_DIR}/${{name}}_latest"',
        'if [ ! -e "$latest.exit" ] && alive "$(cat "$latest.pid" 2>/dev/null)"; then',
        '  echo "problem=run \'$name\' is still running (pid $(cat "$latest.pid")): stop it first with tpuctl stop --name $name"',
        "fi",
        'held=$(tpu_holders); [ -z "$held" ] || '
        'echo "problem=the TPU is held by pid(s) $held: stop them first (tpuctl stop, or kill them)"',
        f'[ -f {env_file} ] || echo "warning=no env file at {target.env_file}: run tpuctl secrets push"',
        "( " + "; ".join(activation_lines(target) or ["true"]) + " ) >/dev/null 2>&1 || "
        f'echo "problem=cannot activate the Python environment ({target.venv or target.conda_env})"',
    )


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
        found = {}
        for word in self.command:
            name, sep, value = word.partition("=")
            if not (sep and _ENV_KEY.fullmatch(name)):
                break
            found[name] = value
        return found

    @property
    def argv(self) -> Sequence[str]:
        return self.command[len(self.assignments):]


def runner_script(target: Target, plan: LaunchPlan, worker_env: Mapping[str, str],
                  lockfile: str = LIBTPU_LOCKFILE, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> str:
    """The detached runner: load .env, activate Python, clear a stale lock, run, always write the exit file."""
    env = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **plan.env, **worker_env}
    env_file = rpath(target.env_file)
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# tpuctl run {plan.name} started {plan.stamp}: detached by `tpuctl launch`; do not edit.",
        f"cd {rpath(target.remote_repo)} || exit 97",
        f"base={LOGS_DIR}/{plan.base}",
        'echo $$ > "$base.pid.tmp" && mv -f "$base.pid.tmp" "$base.pid"',
        'write_exit() { printf \'%s\\n\' "$1" > "$base.exit.tmp" && mv -f "$base.exit.tmp" "$base.exit"; }',
        _holders_function(device_patterns),
        "{",
        "  set +x",
        # Sourced, never printed: the values reach the command's environment only.
        f"  if [ -f {env_file} ]; then set -a; . {env_file} >/dev/null 2>&1; set +a; fi",
        *(f"  export {key}={shlex.quote(value)}" for key, value in env.items()),
        *(f"  {line}" for line in _lock_cleanup(lockfile, for_log=True)),
        '} >> "$base.log" 2>&1',
        "(",
        *(f"  {line}" for line in activation_lines(target)),
        *(f"  export {key}={shlex.quote(value)}" for key, value in plan.assignments.items()),
        f"  exec {shlex.join(plan.argv)}",
        ') >> "$base.log" 2>&1 < /dev/null &',
        "child=$!",
        'trap \'kill -TERM "$child" 2>/dev/null\' TERM HUP INT',
        # `wait` returns early when a trapped signal arrives; loop until the child is really reaped.
        'while :; do wait "$child"; rc=$?; kill -0 "$child" 2>/dev/null || break; done',
        'write_exit "$rc"',
        "",
    ])


def launch_script(target: Target, plan: LaunchPlan, worker_index: int, worker_env: Mapping[str, str],
                  lockfile: str = LIBTPU_LOCKFILE, device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> str:
    meta = {"name": plan.name, "stamp": plan.stamp, "command": list(plan.command), "worker": worker_index,
            "env": dict(plan.env), **({"distributed": dict(worker_env)} if worker_env else {})}
    meta_json = json.dumps(meta)[:-1]  # the git HEAD is added on the worker
    links = " ".join(RUN_FILES)
    return script(
        f"cd {rpath(target.remote_repo)}",
        f"mkdir -p {LOGS_DIR}",
        f"base={LOGS_DIR}/{plan.base}",
        "cat > \"$base.sh\" <<'TPUCTL_RUNNER_EOF'",
        runner_script(target, plan, worker_env, lockfile, device_patterns).rstrip("\n"),
        "TPUCTL_RUNNER_EOF",
        'head=$(git rev-parse HEAD 2>/dev/null || echo unknown)',
        f"printf '%s, \"git_head\": \"%s\", \"started_at\": \"%s\"}}\\n' {shlex.quote(meta_json)} \"$head\" "
        '"$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$base.meta.json"',
        f"for ext in {links}; do",
        f'  ln -sfn "{plan.base}.$ext" "{LOGS_DIR}/.latest.$$" && mv -Tf "{LOGS_DIR}/.latest.$$" '
        f'"{LOGS_DIR}/{plan.name}_latest.$ext"',
        "done",
        'setsid nohup bash "$base.sh" > /dev/null 2>&1 < /dev/null &',
        'for _ in $(seq 100); do [ -s "$base.pid" ] && break; sleep 0.05; done',
        'echo "pid=$(cat "$base.pid" 2>/dev/null)"',
        'echo "log=$PWD/$base.log"',
    )


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
    return script(
        f"repo={rpath(target.remote_repo)}", f"name={shlex.quote(name)}", _alive_function(),
        'cd "$repo" 2>/dev/null || { echo "state=none"; exit 0; }',
        f'latest="{LOGS_DIR}/${{name}}_latest"',
        '[ -e "$latest.pid" ] || [ -e "$latest.log" ] || { echo "state=none"; exit 0; }',
        'echo "log=$PWD/{logs}/$(readlink "$latest.log")"'.replace("{logs}", LOGS_DIR),
        'pid=$(cat "$latest.pid" 2>/dev/null || true); echo "pid=$pid"',
        '[ -f "$latest.exit" ] && echo "exit=$(head -c 32 "$latest.exit")"',
        'if alive "$pid"; then echo "alive=1"; else echo "alive=0"; fi',
        "echo \"step=$(tac \"$latest.log\" 2>/dev/null | grep -a -m 1 -E '(^|[[:space:]])step=[0-9]+ ' || true)\"",
        '[ -f "$latest.meta.json" ] && echo "meta=$(tr -d \'\\n\' < "$latest.meta.json")"',
        "true",
    )


def parse_step_line(line: str) -> dict[str, str]:
    """`step=3 loss=0.1 entropy=0.2 reward_mean=0.5 dt=1.2s` -> its fields (`dt` keeps no unit)."""
    fields = dict(_STEP_FIELD.findall(line[line.find("step="):] if "step=" in line else ""))
    if "dt" in fields:
        fields["dt"] = fields["dt"].removesuffix("s")
    return fields


def parse_status(text: str) -> RunStatus:
    found = parse_fields(text)
    if found.get("state") == "none":
        return RunStatus("none")
    pid = int(found["pid"]) if found.get("pid", "").isdigit() else None
    exit_text = found.get("exit", "").strip()
    exit_code = int(exit_text) if exit_text.lstrip("-").isdigit() else None
    if exit_code is not None:
        state = "exited"
    else:
        state = "running" if found.get("alive") == "1" else "vanished"
    try:
        meta = json.loads(found["meta"]) if found.get("meta") else {}
    except json.JSONDecodeError:
        meta = {}
    return RunStatus(state, exit_code, pid, found.get("log", ""), parse_step_line(found.get("step", "")), meta)


def stop_script(target: Target, name: str, grace_s: float, lockfile: str = LIBTPU_LOCKFILE,
                device_patterns: Sequence[str] = TPU_DEVICE_PATTERNS) -> str:
    """TERM the run's process group, wait up to `grace_s`, then KILL; then clear a stale lock file."""
    ticks = max(1, int(grace_s * 10))
    return script(
        f"repo={rpath(target.remote_repo)}", f"name={shlex.quote(name)}",
        _alive_function(), _holders_function(device_patterns),
        'cd "$repo" 2>/dev/null || { echo "state=none"; exit 0; }',
        f'latest="{LOGS_DIR}/${{name}}_latest"',
        'pid=$(cat "$latest.pid" 2>/dev/null || true)',
        'if alive "$pid"; then',
        '  kill -TERM -- "-$pid" 2>/dev/null || true; echo "signal=TERM"',
        f'  for _ in $(seq {ticks}); do alive "$pid" || break; sleep 0.1; done',
        '  if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || true; echo "signal=KILL"',
        '    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done; fi',
        # A runner killed outright cannot write its exit file: record the kill for it.
        '  if [ ! -e "$latest.exit" ]; then exit_file="$(dirname "$latest")/$(readlink "$latest.exit")"',
        "    printf '137\\n' > \"$exit_file.tmp\" && mv -f \"$exit_file.tmp\" \"$exit_file\"; fi",
        'elif [ -n "$pid" ]; then echo "signal=none"; else echo "state=none"; fi',
        *_lock_cleanup(lockfile),
    )

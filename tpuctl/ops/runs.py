"""What a run is on a worker, for launch, status, stop and tail: its name, its stamp and its files.

A run named NAME started at STAMP (UTC, to the millisecond: 20250101T120000.123Z) owns, inside the checkout:

    logs/NAME_STAMP.sh         the runner script (no secrets: they are loaded at run time)
    logs/NAME_STAMP.log        stdout and stderr of the command
    logs/NAME_STAMP.pid        the runner's pid, which is also the run's process group (setsid)
    logs/NAME_STAMP.identity   the boot id and the runner's start time: a pid alone is no identity
    logs/NAME_STAMP.exit       the exit code, written atomically on every exit, failure included
    logs/NAME_STAMP.meta.json  command, git HEAD, start time, worker
    logs/NAME_latest.*         symlinks with RELATIVE targets to the newest run's files
    logs/NAME.lock             flock'ed from launch until the run's last process ends: one run per name

The scripts that read these (scripts/lib/runs.sh) call a run alive only when its pid still is the
run: same boot, same start time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from tpuctl.config import Target
from tpuctl.console import BadInput

LOGS_DIR = "logs"
LIBTPU_LOCKFILE = "/tmp/libtpu_lockfile"
# Device files a process holds while it owns TPU chips (v4/v5 expose /dev/accel*, v5e/v6e VFIO).
TPU_DEVICE_PATTERNS = ("/dev/accel*", "/dev/vfio/[0-9]*")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")


def check_run_name(name: str) -> str:
    if not _RUN_NAME.fullmatch(name):
        raise BadInput(f"bad run name {name!r}: expected letters, digits, '.' and '-' (at most 64, no '_')")
    return name


def utc_stamp() -> str:
    """A run's UTC start, to the millisecond (ISO 8601 basic): a stop and a relaunch in the same second
    get two stamps, so the run files' noclobber guard only ever stops a real collision."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"


def python_env(target: Target) -> dict[str, str]:
    """The values scripts/lib/python.sh activates the target's Python with (venv or conda_env)."""
    return {"venv": target.venv, "conda_env": target.conda_env}

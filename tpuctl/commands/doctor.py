"""`tpuctl doctor [--kill]`: who holds the TPU on every worker, and libtpu's lock file (tpuctl.ops.doctor)."""

from __future__ import annotations

from typing import Annotated

import typer

from tpuctl.commands.common import WorkerOpt, fail_unless, open_session, workers_of
from tpuctl.commands.views import report_errors, show_devices, show_killed
from tpuctl.console import BadInput, console

GraceOpt = Annotated[int, typer.Option("--grace", help="Seconds between TERM and KILL.")]
DeviceOpt = Annotated[list[str] | None, typer.Option(
    "--device", help="Device files to look at, as globs (repeatable; default /dev/accel* and /dev/vfio/[0-9]*).")]
LockOpt = Annotated[str | None, typer.Option("--lock-file", help="libtpu's lock file (default /tmp/libtpu_lockfile).")]


def doctor(ctx: typer.Context, worker: WorkerOpt = "all",
           kill: Annotated[bool, typer.Option("--kill", help="TERM, wait, KILL the holders; then remove a stale lock.")] = False,
           yes: Annotated[bool, typer.Option("--yes", help="Do not ask before --kill signals anything.")] = False,
           grace: GraceOpt = 10, device: DeviceOpt = None, lock_file: LockOpt = None) -> None:
    """List the processes holding the TPU (pid, user, age, command, tpuctl run) and the libtpu lock file."""
    from tpuctl.ops import doctor as ops
    from tpuctl.ops.runs import LIBTPU_LOCKFILE, TPU_DEVICE_PATTERNS

    if not 0 <= grace <= 3600:
        raise BadInput(f"bad --grace {grace}: expected seconds from 0 to 3600")
    patterns = tuple(device) if device else TPU_DEVICE_PATTERNS
    lockfile = lock_file or LIBTPU_LOCKFILE
    for pattern in (*patterns, lockfile):
        if not pattern.startswith("/"):
            raise BadInput(f"bad device or lock file {pattern!r}: expected an absolute path")
    target, workers = workers_of(ctx, worker)
    with open_session(target) as session:
        seen = ops.look(session, target, workers, lockfile, patterns)
        reached = report_errors(seen)
        show_devices(seen, lockfile)
        holders = {o.worker.index: o.value.holders for o in seen if o.ok and o.value.holders}
        if not kill or not holders:
            fail_unless(reached)
            return
        count = sum(len(found) for found in holders.values())
        if not yes and not typer.confirm(f"Signal these {count} process(es): TERM, then KILL after {grace} s?"):
            console.print("nothing signalled")
            raise typer.Exit(1)
        killed = session.each([w for w in workers if w.index in holders],
                              lambda w: ops.kill(session, target, w, holders[w.index], grace, lockfile, patterns))
        fail_unless(show_killed(killed) and reached)


def register(app: typer.Typer) -> None:
    app.command()(doctor)

"""`tpuctl trust`: show the workers' host-key fingerprints and, on request, pin them in tpuctl.toml (tpuctl.ops.trust)."""

from __future__ import annotations

from typing import Annotated

import typer

from tpuctl.commands.common import WorkerOpt, fail_unless, overrides_of, target_of
from tpuctl.commands.views import show_keys
from tpuctl.console import BadInput, console, err_console


def trust(ctx: typer.Context, worker: WorkerOpt = "all",
          write: Annotated[bool, typer.Option("--write", help="Pin the keys in tpuctl.toml.")] = False,
          replace: Annotated[bool, typer.Option("--replace", help="With --write, also replace CHANGED pins.")] = False,
          ) -> None:
    """Print each worker's host-key fingerprint next to the pinned one; `--write` pins what was seen."""
    from tpuctl.config import project_path
    from tpuctl.ops.targets import resolve_workers
    from tpuctl.ops.trust import scan, write_pins
    from tpuctl.transport import Session
    from tpuctl.workers import parse_worker_spec

    target = target_of(ctx)
    workers = resolve_workers(target)
    outcomes = scan(Session(target), target, [workers[i] for i in parse_worker_spec(worker, len(workers))])
    ok = show_keys(outcomes)
    changed = [o.worker.index for o in outcomes if o.ok and o.value.changed]
    changed_text = ", ".join(map(str, changed))
    if write:
        path = project_path(overrides_of(ctx).config_path)
        if path is None:
            raise BadInput("no tpuctl.toml to write the pins to: create one (see README) or pass --config")
        if changed and not replace:
            raise BadInput(f"host key of worker(s) {changed_text} CHANGED: verify the new key out of band, then rerun "
                           "with --write --replace")
        write_pins(path, target, {o.worker.index: o.value.fingerprint for o in outcomes if o.ok}, len(workers))
        console.out(f"pinned {sum(o.ok for o in outcomes)} key(s) in {path} [targets.{target.alias}]", highlight=False)
    elif changed:
        err_console.print(f"[red]host key of worker(s) {changed_text} CHANGED:[/] tpuctl will refuse to connect; if the "
                          "VM was recreated, verify the new key out of band and run trust --write --replace")
    fail_unless(ok and (write or not changed))


def register(app: typer.Typer) -> None:
    app.command()(trust)

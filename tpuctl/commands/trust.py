"""`tpuctl trust`: show the workers' host-key fingerprints and, on request, pin them in tpuctl.toml."""

from __future__ import annotations

from typing import Annotated

import typer

from tpuctl.commands.common import WorkerOpt, fail_unless, report_errors, target_of
from tpuctl.config import Overrides, Target, project_path
from tpuctl.console import BadInput, console, err_console
from tpuctl.workers import Worker, parse_worker_spec, proxy_for, resolve_workers


def scan_host_key(worker: Worker, proxy_command: str | None = None, timeout: float = 10.0) -> tuple[str, str]:
    """The key type and fingerprint a worker presents (through the proxy, if any); no authentication."""
    import socket

    import paramiko

    from tpuctl.transport import fingerprint

    sock = (paramiko.ProxyCommand(proxy_command) if proxy_command
            else socket.create_connection((worker.host, worker.port), timeout=timeout))
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    finally:
        transport.close()
        sock.close()
    return key.get_name(), fingerprint(key)


def write_pins(path, target: Target, pins: dict[int, str], count: int) -> None:
    """Set host_keys of [targets.<alias>] in tpuctl.toml, keeping everything else in the file as it was."""
    import tomlkit

    document = tomlkit.parse(path.read_text())
    table = document.setdefault("targets", tomlkit.table()).setdefault(target.alias, tomlkit.table())
    keys = list(table.get("host_keys", [])) + [""] * count
    for index, fingerprint in pins.items():
        keys[index] = fingerprint
    table["host_keys"] = keys[:count]
    path.write_text(tomlkit.dumps(document))


def trust(ctx: typer.Context, worker: WorkerOpt = "all",
          write: Annotated[bool, typer.Option("--write", help="Pin the keys in tpuctl.toml.")] = False,
          replace: Annotated[bool, typer.Option("--replace", help="With --write, also replace CHANGED pins.")] = False,
          ) -> None:
    """Print each worker's host-key fingerprint next to the pinned one; `--write` pins what was seen."""
    from tpuctl.transport import Session

    target = target_of(ctx)
    workers = resolve_workers(target)
    selected = [workers[i] for i in parse_worker_spec(worker, len(workers))]
    outcomes = Session(target).each(selected, lambda w: scan_host_key(w, proxy_for(target, w)))
    changed = []
    for o in outcomes:
        if not o.ok:
            continue
        kind, seen = o.value
        pinned = o.worker.fingerprints
        verdict = "pinned" if seen in pinned else ("[red]CHANGED[/] (pinned " + ", ".join(pinned) + ")" if pinned
                                                    else "[yellow]not pinned[/]")
        if pinned and seen not in pinned:
            changed.append(o.worker.index)
        console.print(f"{o.worker.label} {o.worker.address}  {kind} {seen}  {verdict}", highlight=False)
    ok = report_errors(outcomes)
    if write:
        path = project_path(ctx.find_root().obj or Overrides())
        if path is None:
            raise BadInput("no tpuctl.toml to write the pins to: create one (see README) or pass --config")
        if changed and not replace:
            raise BadInput(f"host key of worker(s) {', '.join(map(str, changed))} CHANGED: verify the new key out of "
                           "band, then rerun with --write --replace")
        write_pins(path, target, {o.worker.index: o.value[1] for o in outcomes if o.ok}, len(workers))
        console.out(f"pinned {sum(o.ok for o in outcomes)} key(s) in {path} [targets.{target.alias}]", highlight=False)
    elif changed:
        err_console.print(f"[red]host key of worker(s) {', '.join(map(str, changed))} CHANGED:[/] tpuctl will refuse to "
                          "connect; if the VM was recreated, verify the new key out of band and run trust --write --replace")
    fail_unless(ok and (write or not changed))


def register(app: typer.Typer) -> None:
    app.command()(trust)

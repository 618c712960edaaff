"""`tpuctl secrets push`: copy the local .env to every worker, atomically, mode 600, checksum verified."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tpuctl.commands.common import (
    DryRunOpt,
    Note,
    WorkerOpt,
    fail_unless,
    open_session,
    print_dry_run,
    report_errors,
    workers_of,
)
from tpuctl.config import Target
from tpuctl.console import TpuctlError, console, printable
from tpuctl.envfile import EnvFile, load_env_file
from tpuctl.pairs import fields
from tpuctl.remote.render import render
from tpuctl.workers import Worker

secrets_app = typer.Typer(help="Secrets: the .env that training runs load on the workers.", no_args_is_help=True)
EnvFileOpt = Annotated[Path, typer.Option("--env-file", help="Local .env to copy.")]
TEMPORARY = "<mktemp: {path}.tpuctl-XXXXXXXXXXXX>"


def prepare_script(target: Target) -> str:
    return render("secrets_prepare", env_file=target.env_file)


def install_script(path: str, temporary: str, values_temporary: str) -> str:
    """Keep a differing old file as .previous, rename the new ones into place, report checksums and modes."""
    return render("secrets_install", path=path, temporary=temporary, values_temporary=values_temporary)


def push_preview(target: Target, env_file: Path) -> list[str | Note]:
    """What a push runs on one worker, for --dry-run: the SFTP writes sit between the two scripts."""
    temporary = TEMPORARY.format(path=target.env_file)
    return [prepare_script(target),
            Note(f"# then: sftp write {env_file} -> {temporary}, and its parsed KEY=VALUE records -> another "
                 f"{temporary} (both created with mode 600 by mktemp)"),
            install_script(target.env_file, temporary, temporary)]


def _write(sftp, path: str, data: bytes) -> None:
    """Write into a file the prepare script created (mode 600): open without creating, never chmod after."""
    with sftp.open(path, "r+") as handle:
        handle.write(data)


def push_env(session, target: Target, worker: Worker, env: EnvFile) -> dict[str, str]:
    prepared = fields(session.exec(worker, prepare_script(target), "preparing the env file").out)
    path, temporaries = prepared["path"], (prepared["temporary"], prepared["values_temporary"])
    if not all(t.startswith(f"{path}.tpuctl-") for t in temporaries):
        raise TpuctlError(f"worker {worker.index}: unexpected temporary files {temporaries!r} beside {path}")
    sftp = session.sftp(worker)
    try:
        _write(sftp, temporaries[0], env.data)
        _write(sftp, temporaries[1], env.records)
        found = fields(session.exec(worker, install_script(path, *temporaries), "installing the env file").out)
    except BaseException:
        for temporary in temporaries:
            try:
                sftp.remove(temporary)
            except OSError:
                pass
        raise
    if (found.get("sha256"), found.get("values_sha256")) != (env.sha256, env.records_sha256):
        raise TpuctlError(f"worker {worker.index}: checksum of {path} does not match the local file after copying")
    if (found.get("mode"), found.get("values_mode")) != ("600", "600"):
        raise TpuctlError(f"worker {worker.index}: {path} has mode {found.get('mode')}, expected 600")
    return {"path": path, **found}


def run_push(session, target: Target, workers: list[Worker], env: EnvFile) -> bool:
    outcomes = session.each(workers, lambda w: push_env(session, target, w, env))
    for outcome in outcomes:
        if outcome.ok:
            kept = f"  (previous file kept as {outcome.value['previous']})" if "previous" in outcome.value else ""
            console.out(printable(f"{outcome.worker.label} {outcome.worker.address}  {outcome.value['path']}  "
                                  f"mode 600, sha256 verified{kept}"), highlight=False)
    ok = report_errors(outcomes)
    if ok:
        console.out(f"pushed {len(env.keys)} variable(s): {', '.join(env.keys)}", highlight=False)
    return ok


@secrets_app.command("push")
def push(ctx: typer.Context, env_file: EnvFileOpt = Path(".env"), worker: WorkerOpt = "all",
         dry_run: DryRunOpt = False) -> None:
    """Validate the local .env, then copy it to the target's env_file on every worker (key names shown, never values)."""
    target, workers = workers_of(ctx, worker)
    env = load_env_file(env_file)
    if dry_run:
        print_dry_run(target, [(w, item) for w in workers for item in push_preview(target, env_file)])
        return
    with open_session(target) as session:
        fail_unless(run_push(session, target, workers, env))


def register(app: typer.Typer) -> None:
    app.add_typer(secrets_app, name="secrets")

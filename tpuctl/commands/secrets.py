"""`tpuctl secrets push`: copy the local .env to every worker, atomically, mode 600, checksum verified."""

from __future__ import annotations

import secrets as token
from pathlib import Path
from typing import Annotated

import typer

from tpuctl.commands.common import (
    DryRunOpt,
    WorkerOpt,
    fail_unless,
    open_session,
    print_dry_run,
    report_errors,
    workers_of,
)
from tpuctl.config import Target
from tpuctl.console import TpuctlError, console
from tpuctl.envfile import EnvFile, load_env_file
from tpuctl.remote.git import parse_fields
from tpuctl.remote.shell import rpath, script
from tpuctl.workers import Worker

secrets_app = typer.Typer(help="Secrets: the .env that training runs load on the workers.", no_args_is_help=True)
EnvFileOpt = Annotated[Path, typer.Option("--env-file", help="Local .env to copy.")]


def prepare_script(target: Target) -> str:
    return script(f"p={rpath(target.env_file)}", 'mkdir -p "$(dirname "$p")"', 'echo "path=$p"')


def install_script(path: str, temporary: str) -> str:
    """Keep a differing old file as .previous, rename the new one into place, report checksum and mode."""
    return script(
        f"p={rpath(path)}; t={rpath(temporary)}",
        'if [ -f "$p" ] && ! cmp -s "$p" "$t"; then cp -p "$p" "$p.previous" && echo "previous=$p.previous"; fi',
        'mv -f "$t" "$p"',
        'echo "sha256=$(sha256sum "$p" | cut -d" " -f1)"',
        'echo "mode=$(stat -c %a "$p")"',
    )


def push_preview(target: Target, env_file: Path) -> str:
    """What a push runs on one worker, for --dry-run: the SFTP copy sits between the two scripts."""
    temporary = f"{target.env_file}.tpuctl-<12 random hex digits>"
    return (prepare_script(target) + f"# then: sftp put {env_file} -> {temporary} (mode 600 before writing)\n"
            + install_script(target.env_file, temporary))


def push_env(session, target: Target, worker: Worker, env: EnvFile) -> dict[str, str]:
    path = parse_fields(session.exec(worker, prepare_script(target), "preparing the env file folder").out)["path"]
    temporary = f"{path}.tpuctl-{token.token_hex(6)}"
    sftp = session.sftp(worker)
    with sftp.open(temporary, "wx") as handle:
        sftp.chmod(temporary, 0o600)  # before any byte of the secret is written
        handle.write(env.data)
    found = parse_fields(session.exec(worker, install_script(path, temporary), "installing the env file").out)
    if found.get("sha256") != env.sha256:
        raise TpuctlError(f"worker {worker.index}: checksum of {path} does not match the local file after copying")
    if found.get("mode") != "600":
        raise TpuctlError(f"worker {worker.index}: {path} has mode {found.get('mode')}, expected 600")
    return {"path": path, **found}


def run_push(session, target: Target, workers: list[Worker], env: EnvFile) -> bool:
    outcomes = session.each(workers, lambda w: push_env(session, target, w, env))
    for outcome in outcomes:
        if outcome.ok:
            kept = f"  (previous file kept as {outcome.value['previous']})" if "previous" in outcome.value else ""
            console.out(f"{outcome.worker.label} {outcome.worker.address}  {outcome.value['path']}  mode 600, "
                        f"sha256 verified{kept}", highlight=False)
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
        print_dry_run(target, [(w, push_preview(target, env_file)) for w in workers])
        return
    with open_session(target) as session:
        fail_unless(run_push(session, target, workers, env))


def register(app: typer.Typer) -> None:
    app.add_typer(secrets_app, name="secrets")

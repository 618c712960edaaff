"""`tpuctl secrets push`: copy the local .env to every worker, atomically, mode 600, checksum verified
(tpuctl.ops.secrets)."""

from __future__ import annotations

from pathlib import Path

import typer

from tpuctl.commands.common import DryRunOpt, EnvFileOpt, WorkerOpt, fail_unless, open_session, workers_of
from tpuctl.commands.views import print_dry_run, show_push

secrets_app = typer.Typer(help="Secrets: the .env that training runs load on the workers.", no_args_is_help=True)


@secrets_app.command("push")
def push(ctx: typer.Context, env_file: EnvFileOpt = Path(".env"), worker: WorkerOpt = "all",
         dry_run: DryRunOpt = False) -> None:
    """Validate the local .env, then copy it to the target's env_file on every worker (key names shown, never values)."""
    from tpuctl.envfile import load_env_file
    from tpuctl.ops.secrets import push_plan, push_secrets

    target, workers = workers_of(ctx, worker)
    env = load_env_file(env_file)
    if dry_run:
        print_dry_run(target, push_plan(target, workers, env_file))
        return
    with open_session(target) as session:
        fail_unless(show_push(push_secrets(session, target, workers, env), env))


def register(app: typer.Typer) -> None:
    app.add_typer(secrets_app, name="secrets")

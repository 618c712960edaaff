"""The `tpuctl` entry point: global options, exit codes, and the command groups (tpuctl.commands).

Nothing heavy is imported here: paramiko, google-cloud and jax load only inside commands, so
`tpuctl --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

# typer carries its own copy of click: its exceptions, not the click package's, reach this group.
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from tpuctl import __version__
from tpuctl.commands import babysit, config_cmd, doctor, report, runs, secrets, setup, smoke, sync, tail, tpu, trust, verify
from tpuctl.commands.common import Overrides
from tpuctl.console import EXIT_BAD_INPUT, BadInput, TpuctlError, abort, console
from tpuctl.pairs import parse_pairs


class _Group(TyperGroup):
    """Turns every TpuctlError, and every option or argument click refuses (`--grace -1`, `-n -5`),
    into one clear line on stderr and its exit code (2 for bad input), never a usage box."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TpuctlError as exc:
            abort(str(exc), exc.exit_code)
        except UsageError as exc:
            _usage_error(exc)


def _usage_error(exc: UsageError) -> NoReturn:
    if isinstance(exc, NoArgsIsHelpError):  # `tpuctl` or `tpuctl secrets` alone: the help
        raise exc
    where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
    abort(exc.format_message().rstrip(".") + where, EXIT_BAD_INPUT)


app = typer.Typer(
    name="tpuctl", cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Run the TPU VM training SOP from your laptop, on one worker or a whole pod.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.print(f"tpuctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option("--config", help="Project file (default: tpuctl.toml here or above).")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Target name in tpuctl.toml.")] = None,
    project: Annotated[str | None, typer.Option(help="Google Cloud project.")] = None,
    zone: Annotated[str | None, typer.Option(help="Zone, e.g. us-central2-b.")] = None,
    tpu: Annotated[str | None, typer.Option("--tpu", help="TPU VM name; its workers come from the TPU API.")] = None,
    internal_ip: Annotated[bool, typer.Option("--internal-ip", help="Reach TPU workers at internal IPs.")] = False,
    iap: Annotated[bool, typer.Option("--tunnel-through-iap", help="Reach TPU workers through an IAP tunnel.")] = False,
    branch: Annotated[str | None, typer.Option(help="Git branch to sync.")] = None,
    hosts: Annotated[str | None, typer.Option(help="Explicit workers: host[:port],host[:port],...")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any target setting: KEY=VALUE (repeatable).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Global options apply to every command; see `tpuctl config` for the effective values."""
    try:
        values = {key.strip(): value for key, value in parse_pairs(set_ or [], "--set", ", e.g. --set branch=dev").items()}
    except BadInput as exc:
        abort(str(exc))
    named = {"project": project, "zone": zone, "name": tpu, "branch": branch, "hosts": hosts,
             "internal_ip": "true" if internal_ip else None, "tunnel_through_iap": "true" if iap else None}
    values.update({key: value for key, value in named.items() if value is not None})
    ctx.obj = Overrides(config_path=config, target=target, values=values)


for module in (config_cmd, trust, sync, secrets, setup, verify, runs, tail, report, smoke, babysit, doctor, tpu):
    module.register(app)


def main() -> None:
    app()

"""The `tpuctl` entry point: global options, then one module per command group.

Nothing heavy is imported here: fabric, paramiko, google-cloud and jax load only inside commands,
so `tpuctl --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from tpuctl import __version__
from tpuctl.commands import config_cmd, runs, secrets, smoke, sync, tail, tpu, trust, verify
from tpuctl.config import Overrides
from tpuctl.console import BadInput, TpuctlError, abort, console


class _Group(TyperGroup):
    """Turns every TpuctlError into one clear line on stderr and its exit code (2 for bad input)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TpuctlError as exc:
            abort(str(exc), exc.exit_code)


app = typer.Typer(
    cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Run the TPU VM training SOP from your laptop, on one worker or a whole pod.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.print(f"tpuctl {__version__}")
        raise typer.Exit()


def _settings(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"bad --set {pair!r}: expected KEY=VALUE, e.g. --set branch=dev")
        values[key.strip()] = value
    return values


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
        values = _settings(set_ or [])
    except BadInput as exc:
        abort(str(exc))
    named = {"project": project, "zone": zone, "name": tpu, "branch": branch, "hosts": hosts,
             "internal_ip": "true" if internal_ip else None, "tunnel_through_iap": "true" if iap else None}
    values.update({key: value for key, value in named.items() if value is not None})
    ctx.obj = Overrides(config_path=config, target=target, values=values)


for module in (config_cmd, trust, sync, secrets, verify, runs, tail, smoke, tpu):
    module.register(app)


def main() -> None:
    app()

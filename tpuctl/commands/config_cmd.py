"""`tpuctl config`: the effective target, each value with the layer it came from."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from tpuctl.commands.common import JsonOpt, target_of
from tpuctl.console import console

PRECEDENCE = "defaults < tpuctl.toml [targets.NAME] < TPUCTL_<FIELD> environment < flags (--set KEY=VALUE, --hosts, ...)"


def config(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print the effective target configuration and where each value came from."""
    from tpuctl.config import SETTINGS, env_name

    target = target_of(ctx)
    values = {key: getattr(target, key) for key in SETTINGS}
    if as_json:
        console.print_json(json.dumps({
            "target": target.alias, "remote_repo": target.remote_repo if target.repo_url or target.repo_path else "",
            "values": {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
            "sources": dict(target.sources)}))
        return
    table = Table("setting", "value", "source", "environment variable", title=escape(f"target {target.alias!r}"))
    for key, value in values.items():
        shown = ", ".join(value) if isinstance(value, tuple) else (
            ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value))
        table.add_row(key, escape(shown), escape(target.sources.get(key, "default")), env_name(key))
    console.print(table)
    console.out(f"precedence: {PRECEDENCE}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(config)

"""What every command shares: its options, what the command line asked for, and the target, workers and
SSH session it acts on.

Kept light on purpose: the configuration, paramiko and the TPU API are imported only once a command runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tpuctl.console import EXIT_FAILED, BadInput, console, shown

if TYPE_CHECKING:
    from tpuctl.config import Target
    from tpuctl.local_checkout import LocalCheckout
    from tpuctl.transport import Session
    from tpuctl.workers import Worker

WorkerOpt = Annotated[str, typer.Option("--worker", "-w", help="Workers: 0 | all | 0,2 | 1-3.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print every remote script per worker, in order; change nothing.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
NameOpt = Annotated[str, typer.Option("--name", help="Run name: logs/<name>_<UTC stamp>.{log,exit,pid}.")]
CommandArg = Annotated[list[str] | None, typer.Argument(help="The command to run, after `--`.")]
EnvFileOpt = Annotated[Path, typer.Option("--env-file", help="Local .env to copy.")]
UnpushedOpt = Annotated[bool, typer.Option("--allow-unpushed", help="Sync although the local checkout has commits not "
                                                                     "on origin/BRANCH, uncommitted changes or another branch.")]
DEFAULT_RUN = "train"


@dataclass(frozen=True)
class Overrides:
    """What the command line asked for: a config file, a target, and settings (`--set`, `--zone`, ...)."""

    config_path: str | None = None
    target: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)


def overrides_of(ctx: typer.Context) -> Overrides:
    found = ctx.find_root().obj
    return found if isinstance(found, Overrides) else Overrides()


def target_of(ctx: typer.Context) -> Target:
    from tpuctl.config import load_target

    overrides = overrides_of(ctx)
    return load_target(overrides.config_path, overrides.target, overrides.values)


def workers_of(ctx: typer.Context, spec: str, require_ready: bool = True) -> tuple[Target, list[Worker]]:
    from tpuctl.ops.targets import select_workers

    target = target_of(ctx)
    return target, select_workers(target, spec, require_ready)


def project_folder(ctx: typer.Context) -> Path:
    """The folder holding the project's tpuctl.toml (--config, TPUCTL_CONFIG, or found upward from here);
    else the current folder."""
    from tpuctl.config import project_path

    path = project_path(overrides_of(ctx).config_path)
    return path.parent if path else Path.cwd()


def checked_local_checkout(ctx: typer.Context, target: Target, allow_unpushed: bool) -> LocalCheckout | None:
    """The git checkout holding the project's tpuctl.toml (else the current folder; None outside git, or when
    its origin is not repo_url: then one line says it is not compared). What the workers would miss from it
    (unpushed commits, uncommitted changes, another branch) refuses a sync, exit 2, unless `allow_unpushed`."""
    from tpuctl.config import redact_url
    from tpuctl.local_checkout import inspect_checkout, same_repository

    local = inspect_checkout(project_folder(ctx), target.branch)
    if local is not None and target.repo_url and not same_repository(local.origin_url, target.repo_url):
        origin = f"its origin {redact_url(local.origin_url)}" if local.origin_url else "it has no origin, so it"
        console.print(f"[yellow]local checkout {shown(str(local.folder))}:[/] {shown(origin)} is not repo_url "
                      f"{shown(redact_url(target.repo_url))}; not compared with the workers", highlight=False)
        return None
    if local is not None and local.refusal() and not allow_unpushed:
        raise BadInput(local.refusal())
    return local


def open_session(target: Target) -> Session:
    from tpuctl.transport import Session

    return Session(target)


def expected_backend(chosen: str | None, default: str) -> str:
    """The --expect-backend a command was given, else the target's; one of the backends jax reports."""
    from tpuctl.config import BACKENDS

    backend = chosen or default
    if backend not in BACKENDS:
        raise BadInput(f"bad --expect-backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def fail_unless(ok: bool) -> None:
    if not ok:
        raise typer.Exit(EXIT_FAILED)

"""Secrets push: copy the local .env to every worker, atomically, mode 600, checksums verified.

Per worker: scripts/secrets_prepare.sh creates two temporary files with mode 600 beside the env
file; SFTP writes the .env into one and its parsed KEY=VALUE records (tpuctl.envfile) into the
other, opening them without creating them; scripts/secrets_install.sh keeps a differing old file
as .previous, renames both into place and reports their checksums and modes, which must match.
No value is ever printed or passed in argv.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import paramiko

from tpuctl.config import Target
from tpuctl.console import TpuctlError
from tpuctl.envfile import EnvFile
from tpuctl.ops.common import TEMPORARY, Note, Step, remove_temporaries
from tpuctl.pairs import fields
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker


def prepare_script(target: Target) -> RenderedScript:
    return render("secrets_prepare", env_file=target.env_file)


def install_script(path: str, temporary: str, values_temporary: str) -> RenderedScript:
    """Keep a differing old file as .previous, rename the new ones into place, report checksums and modes."""
    return render("secrets_install", path=path, temporary=temporary, values_temporary=values_temporary)


def push_plan(target: Target, workers: list[Worker], env_file: Path) -> list[Step]:
    """What a push runs on each worker, for --dry-run: the SFTP writes sit between the two scripts."""
    temporary = TEMPORARY.format(path=target.env_file)
    steps = (prepare_script(target),
             Note(f"# then: sftp write {env_file} -> {temporary}, and its parsed KEY=VALUE records -> another "
                  f"{temporary} (both created with mode 600 by mktemp)"),
             install_script(target.env_file, temporary, temporary))
    return [(worker, step) for worker in workers for step in steps]


@dataclass(frozen=True)
class Pushed:
    """The env file as installed on one worker, checksums and modes verified."""

    path: str
    previous: str = ""  # where the differing old file was kept, if there was one


def push_one(session: Session, target: Target, worker: Worker, env: EnvFile) -> Pushed:
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
        remove_temporaries(sftp, *temporaries)
        raise
    if (found.get("sha256"), found.get("values_sha256")) != (env.sha256, env.records_sha256):
        raise TpuctlError(f"worker {worker.index}: checksum of {path} does not match the local file after copying")
    if (found.get("mode"), found.get("values_mode")) != ("600", "600"):
        raise TpuctlError(f"worker {worker.index}: {path} has mode {found.get('mode')}, expected 600")
    return Pushed(path, found.get("previous", ""))


def _write(sftp: paramiko.SFTPClient, path: str, data: bytes) -> None:
    """Write into a file the prepare script created (mode 600): open without creating, never chmod after."""
    with sftp.open(path, "r+") as handle:
        handle.write(data)


def push_secrets(session: Session, target: Target, workers: list[Worker], env: EnvFile) -> list[Outcome[Pushed]]:
    return session.each(workers, lambda w: push_one(session, target, w, env))

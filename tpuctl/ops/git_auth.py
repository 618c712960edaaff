"""How a sync's git reads a private repository: the values scripts/lib/git_auth.sh needs.

Three ways, none of which leaves a credential in the checkout:
- a forwarded SSH agent (`forward_agent`), offered on the sync's own SSH channels only;
- a deploy key (`deploy_key`), copied to each worker like the .env (mode 600, atomic, checksum
  verified: `push_deploy_key`) to `deploy_key_path(target)` and used through GIT_SSH_COMMAND with
  IdentitiesOnly;
- an HTTPS token (GIT_TOKEN or GITHUB_TOKEN in the worker's env file), handed to git by a
  credential helper, for the scheme and host of repo_url only.
Over SSH the git host's key is checked against the pinned lines of the common hosts
(`git_hosts_known`, beside this module) and the target's own `git_host_keys`; never accepted blindly.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from functools import cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from tpuctl.config import Target
from tpuctl.console import BadInput, TpuctlError
from tpuctl.ops.common import TEMPORARY, Note, Step, remove_temporaries
from tpuctl.pairs import fields
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker

PINNED_FILE = "git_hosts_known"
@cache
def pinned_host_keys() -> tuple[str, ...]:
    """The known_hosts lines shipped for github.com and gitlab.com."""
    text = (resources.files("tpuctl.remote") / PINNED_FILE).read_text()
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


def token_origin(url: str) -> str:
    """`scheme://host[:port]` of an http(s) repo_url, as git names it to a credential helper; "" otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return ""
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def deploy_key_path(target: Target) -> str:
    """Where the deploy key lives on each worker: one file per repository (GitHub wants one key per
    repository), beside the user's keys."""
    digest = hashlib.sha256(target.repo_url.encode()).hexdigest()[:12]
    return f"~/.ssh/tpuctl_deploy_{digest}"


def git_auth_values(target: Target) -> dict[str, str | tuple[str, ...]]:
    """The params every script that runs git against repo_url takes (see lib/git_auth.sh)."""
    return {"deploy_key": deploy_key_path(target) if target.deploy_key else "",
            "token_origin": token_origin(target.repo_url),
            "git_host_keys": (*pinned_host_keys(), *target.git_host_keys)}


def check_agent(target: Target) -> None:
    """With forward_agent, there must be an agent here to forward: else one line, before any worker is touched."""
    if target.forward_agent and not os.environ.get("SSH_AUTH_SOCK"):
        raise BadInput("forward_agent: expected an SSH agent on this machine, but SSH_AUTH_SOCK is not set: "
                       "start one (eval \"$(ssh-agent)\") and ssh-add the key that reads the repository")


def read_deploy_key(target: Target) -> bytes:
    """The deploy key's bytes, after checking it is a private key ssh can use without a passphrase."""
    path = Path(target.deploy_key).expanduser()
    if not path.is_file():
        raise BadInput(f"deploy_key: expected a private key file, received {target.deploy_key!r} (no such file)")
    usable = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(path)], capture_output=True, check=False,
                            stdin=subprocess.DEVNULL)
    if usable.returncode != 0:
        raise BadInput(f"deploy_key: expected a private key without a passphrase (a worker cannot type one), "
                       f"received {target.deploy_key!r}")
    return path.read_bytes()


def deploy_key_prepare_script(target: Target) -> RenderedScript:
    """Step 1 of copying the deploy key: prints the key's path and a mode-600 temporary file beside it."""
    return render("deploy_key_prepare", key_path=deploy_key_path(target))


def deploy_key_install_script(path: str, temporary: str) -> RenderedScript:
    """Step 2: rename the written temporary file into place, print its checksum and mode."""
    return render("deploy_key_install", path=path, temporary=temporary)


def deploy_key_plan(target: Target, workers: list[Worker]) -> list[Step]:
    """What copying the deploy key runs on each worker, for --dry-run (nothing when there is no deploy key)."""
    if not target.deploy_key:
        return []
    path = deploy_key_path(target)
    temporary = TEMPORARY.format(path=path)
    steps = (deploy_key_prepare_script(target),
             Note(f"# then: sftp write {target.deploy_key} -> {temporary} (created with mode 600 by mktemp)"),
             deploy_key_install_script(path, temporary))
    return [(worker, step) for worker in workers for step in steps]


def push_deploy_key(session: Session, target: Target, workers: list[Worker]) -> list[Outcome[str]]:
    """Copy the deploy key to every worker (nothing when there is none); each outcome is the key's path there."""
    if not target.deploy_key:
        return []
    key = read_deploy_key(target)
    return session.each(workers, lambda w: _push_one(session, target, w, key))


def _push_one(session: Session, target: Target, worker: Worker, key: bytes) -> str:
    prepared = fields(session.exec(worker, deploy_key_prepare_script(target), "preparing the deploy key").out)
    path, temporary = prepared["path"], prepared["temporary"]
    if not temporary.startswith(f"{path}.tpuctl-"):
        raise TpuctlError(f"worker {worker.index}: unexpected temporary file {temporary!r} beside {path}")
    sftp = session.sftp(worker)
    try:
        with sftp.open(temporary, "r+") as handle:  # created mode 600 by the script: never chmod after
            handle.write(key)
        found = fields(session.exec(worker, deploy_key_install_script(path, temporary), "installing the deploy key").out)
    except BaseException:
        remove_temporaries(sftp, temporary)
        raise
    if found.get("sha256") != hashlib.sha256(key).hexdigest():
        raise TpuctlError(f"worker {worker.index}: checksum of {path} does not match deploy_key after copying")
    if found.get("mode") != "600":
        raise TpuctlError(f"worker {worker.index}: {path} has mode {found.get('mode')}, expected 600")
    return path

"""`tpuctl sync`: make each worker's checkout exactly origin/BRANCH, losing nothing the user had.

Two phases: a read-only preflight on every worker (is the branch there, is the folder ours to
manage, is a run alive in it), then the change. Local edits found on a worker are stashed, never
thrown away; the secret env files and logs/ are never stashed or cleaned; commits only the worker
has are kept under refs/tpuctl/backup/STAMP. The scripts are scripts/sync_*.sh.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpuctl.config import Target
from tpuctl.remote.git_auth import git_auth_values
from tpuctl.remote.render import render

LOGS_DIR = "logs"


def preflight_script(target: Target, force: bool = False) -> str:
    """Read-only: prints `problem=...` lines for anything that must stop the sync before it starts."""
    return render("sync_preflight", repo=target.remote_repo, url=target.repo_url, branch=target.branch,
                  force=int(force), env_file=target.env_file, **git_auth_values(target))


def apply_script(target: Target, stash_label: str, stamp: str) -> str:
    return render("sync_apply", repo=target.remote_repo, url=target.repo_url, branch=target.branch,
                  env_file=target.env_file, stash_label=stash_label, stamp=stamp, **git_auth_values(target))


@dataclass(frozen=True)
class SyncResult:
    head: str
    status: str
    stashed: str = ""
    backups: tuple[str, ...] = ()
    refused: str = ""

    @property
    def short_head(self) -> str:
        return self.head[:7]


def parse_fields(text: str) -> dict[str, str]:
    """`key=value` lines printed by a remote script (later lines win)."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            found[key] = value
    return found


def parse_lines(text: str, key: str) -> list[str]:
    """Every value of `key=` lines, in order (for keys a script prints more than once)."""
    return [line[len(key) + 1:] for line in text.splitlines() if line.startswith(key + "=")]


def parse_sync(text: str) -> SyncResult:
    found = parse_fields(text)
    return SyncResult(head=found.get("head", ""), status=found.get("status", ""), stashed=found.get("stashed", ""),
                      backups=tuple(parse_lines(text, "backup")), refused=found.get("refused", ""))

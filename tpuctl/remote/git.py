"""`tpuctl sync`: make each worker's checkout exactly origin/BRANCH, losing nothing the user had.

Two phases: a read-only preflight on every worker (is the branch there, is the folder ours to
manage, is a run alive in it), then the change. Local edits found on a worker are stashed, never
thrown away; the secret env files and logs/ are never stashed or cleaned; commits only the worker
has are kept under refs/tpuctl/backup/STAMP. The scripts are scripts/sync_*.sh.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpuctl.config import Target
from tpuctl.pairs import fields, values_of
from tpuctl.remote.render import render

LOGS_DIR = "logs"


def preflight_script(target: Target, force: bool = False) -> str:
    """Read-only: prints `problem=...` lines for anything that must stop the sync before it starts."""
    return render("sync_preflight", repo=target.remote_repo, url=target.repo_url, branch=target.branch,
                  force=int(force))


def apply_script(target: Target, stash_label: str, stamp: str) -> str:
    return render("sync_apply", repo=target.remote_repo, url=target.repo_url, branch=target.branch,
                  env_file=target.env_file, stash_label=stash_label, stamp=stamp)


@dataclass(frozen=True)
class SyncResult:
    head: str
    status: str
    stashed: str = ""
    backups: tuple[str, ...] = ()

    @property
    def short_head(self) -> str:
        return self.head[:7]


def parse_sync(text: str) -> SyncResult:
    found = fields(text)
    return SyncResult(head=found.get("head", ""), status=found.get("status", ""), stashed=found.get("stashed", ""),
                      backups=tuple(values_of(text, "backup")))

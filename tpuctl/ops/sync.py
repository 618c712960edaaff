"""Sync: make each worker's checkout exactly origin/BRANCH, losing nothing the user had.

Two phases: a read-only preflight on every worker (is the branch there and readable with the
credentials given, is the folder ours to manage, is a run alive in it), then the change
(scripts/sync_preflight.sh, scripts/sync_apply.sh). A private repository's credentials reach git
as tpuctl.ops.git_auth says: a deploy key is copied before the preflight, the agent is forwarded on
the sync's own channels only.
Local edits found on a worker are stashed, never thrown away; the secret env files and logs/ are
never stashed or cleaned; commits only the worker has are kept under refs/tpuctl/backup/STAMP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from tpuctl.config import Target
from tpuctl.console import TpuctlError
from tpuctl.ops.common import Preflight, Step, preflight
from tpuctl.ops.git_auth import check_agent, deploy_key_plan, git_auth_values, push_deploy_key
from tpuctl.pairs import fields, values_of
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker

_OBJECT_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class SyncLabels:
    """How one sync names what it keeps: the stash message and the stamp of backup refs."""

    stash: str
    stamp: str

    @classmethod
    def at(cls, now: datetime, by: str) -> SyncLabels:
        """Labels for a sync started at `now` by the command `by` (sync, smoke, ...)."""
        return cls(f"tpuctl {by} " + now.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y%m%dT%H%M%SZ"))


def preflight_script(target: Target, force: bool = False) -> RenderedScript:
    """Read-only: prints `problem=...` lines for anything that must stop the sync before it starts."""
    return render("sync_preflight", repo=target.remote_repo, url=target.repo_url, branch=target.branch,
                  force=int(force), env_file=target.env_file, **git_auth_values(target))


def apply_script(target: Target, labels: SyncLabels) -> RenderedScript:
    return render("sync_apply", repo=target.remote_repo, url=target.repo_url, branch=target.branch,
                  env_file=target.env_file, stash_label=labels.stash, stamp=labels.stamp, **git_auth_values(target))


def sync_plan(target: Target, workers: list[Worker], labels: SyncLabels, force: bool = False) -> list[Step]:
    """Every script a sync runs, per worker and in order (the deploy key's copy first, when there is one)."""
    return [*deploy_key_plan(target, workers),
            *((w, script) for w in workers for script in (preflight_script(target, force), apply_script(target, labels)))]


@dataclass(frozen=True)
class Synced:
    """One worker's checkout after the sync."""

    head: str
    status: str
    stashed: str = ""
    backups: tuple[str, ...] = ()
    refused: str = ""  # why this worker changed nothing (a branch using Git LFS, and no git-lfs there)

    @property
    def short_head(self) -> str:
        return self.head[:7]


def parse_synced(text: str) -> Synced:
    """The apply script's answer. Its head reaches local git argv (compare_heads), so anything but a full
    object name (sha1 or sha256) is an unreadable answer, never an option or a revision expression."""
    found = fields(text)
    synced = Synced(head=found.get("head", ""), status=found.get("status", ""), stashed=found.get("stashed", ""),
                    backups=tuple(values_of(text, "backup")), refused=found.get("refused", ""))
    if not synced.refused and not _OBJECT_NAME.fullmatch(synced.head):
        raise TpuctlError(f"unreadable answer from the sync: head={synced.head!r}, expected a commit hash "
                          "(40 or 64 lowercase hex digits)")
    return synced


@dataclass(frozen=True)
class SyncReport:
    preflight: Preflight
    outcomes: list[Outcome[Synced]] = field(default_factory=list)  # empty when the preflight stopped the sync
    copied: list[Outcome[str]] = field(default_factory=list)  # the deploy key's copy, per worker (when set)

    @property
    def heads(self) -> set[str]:
        return {o.value.head for o in self.outcomes if o.ok and not o.value.refused}

    @property
    def refusals(self) -> list[str]:
        return [f"worker {o.worker.index}: {o.value.refused}" for o in self.outcomes if o.ok and o.value.refused]

    @property
    def ok(self) -> bool:
        """Every worker synced, all to the same commit."""
        return (all(o.ok for o in self.copied) and self.preflight.passed and all(o.ok for o in self.outcomes)
                and not self.refusals and len(self.heads) == 1)


def sync(session: Session, target: Target, workers: list[Worker], labels: SyncLabels, force: bool = False) -> SyncReport:
    """Copy the deploy key (if any), preflight on every worker; when it passes everywhere, sync every worker."""
    check_agent(target)
    copied = push_deploy_key(session, target, workers)
    if not all(o.ok for o in copied):
        return SyncReport(Preflight([]), copied=copied)
    agent = target.forward_agent
    checked = preflight(session, workers, lambda w: preflight_script(target, force), "sync preflight", forward_agent=agent)
    if not checked.passed:
        return SyncReport(checked, copied=copied)
    script = apply_script(target, labels)
    return SyncReport(checked, session.each(
        workers, lambda w: parse_synced(session.exec(w, script, "sync", timeout=600, forward_agent=agent).out)), copied)

"""Sync: make each worker's checkout exactly origin/BRANCH, losing nothing the user had.

Two phases: a read-only preflight on every worker (is the branch there, is the folder ours to
manage, is a run alive in it), then the change (scripts/sync_preflight.sh, scripts/sync_apply.sh).
Local edits found on a worker are stashed, never thrown away; the secret env files and logs/ are
never stashed or cleaned; commits only the worker has are kept under refs/tpuctl/backup/STAMP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tpuctl.config import Target
from tpuctl.ops.common import Preflight, Step, preflight
from tpuctl.pairs import fields, values_of
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker


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
                  force=int(force))


def apply_script(target: Target, labels: SyncLabels) -> RenderedScript:
    return render("sync_apply", repo=target.remote_repo, url=target.repo_url, branch=target.branch,
                  env_file=target.env_file, stash_label=labels.stash, stamp=labels.stamp)


def sync_plan(target: Target, workers: list[Worker], labels: SyncLabels, force: bool = False) -> list[Step]:
    """Every script a sync runs, per worker and in order."""
    return [(w, script) for w in workers for script in (preflight_script(target, force), apply_script(target, labels))]


@dataclass(frozen=True)
class Synced:
    """One worker's checkout after the sync."""

    head: str
    status: str
    stashed: str = ""
    backups: tuple[str, ...] = ()

    @property
    def short_head(self) -> str:
        return self.head[:7]


def parse_synced(text: str) -> Synced:
    found = fields(text)
    return Synced(head=found.get("head", ""), status=found.get("status", ""), stashed=found.get("stashed", ""),
                  backups=tuple(values_of(text, "backup")))


@dataclass(frozen=True)
class SyncReport:
    preflight: Preflight
    outcomes: list[Outcome[Synced]] = field(default_factory=list)  # empty when the preflight stopped the sync

    @property
    def heads(self) -> set[str]:
        return {o.value.head for o in self.outcomes if o.ok}

    @property
    def ok(self) -> bool:
        """Every worker synced, all to the same commit."""
        return self.preflight.passed and all(o.ok for o in self.outcomes) and len(self.heads) == 1


def sync(session: Session, target: Target, workers: list[Worker], labels: SyncLabels, force: bool = False) -> SyncReport:
    """Preflight on every worker; when it passes everywhere, sync every worker."""
    checked = preflight(session, workers, lambda w: preflight_script(target, force), "sync preflight")
    if not checked.passed:
        return SyncReport(checked)
    script = apply_script(target, labels)
    return SyncReport(checked, session.each(workers, lambda w: parse_synced(session.exec(w, script, "sync", timeout=600).out)))

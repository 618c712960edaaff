"""The checkout on this machine that holds tpuctl.toml: does the VM get what the user has in front of them?

`sync` makes the workers exactly origin/BRANCH. Commits that were never pushed, edits to tracked files
that were never committed, or another branch checked out here mean the VM runs something else than
this checkout: `inspect_checkout` finds each of them, with plain git, before anything changes.
Untracked files are not counted (build outputs, notebooks and the .env live there).
All of this holds only when the checkout is a clone of repo_url: `same_repository` says whether it is
(tpuctl.toml may live in a separate infrastructure repository, whose state says nothing of the workers').
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

SHOWN_COMMITS = 5  # short hashes named in the one-line message; the rest are counted
SHOWN_FILES = 3

# scheme://[userinfo@]host[:port][/path] and scp-like [user@]host:path, as git tells them apart.
_SCHEME_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^/]*@)?(?P<host>\[[^\]/]*\]|[^/:]*)(?::\d*)?(?P<path>/.*)?")
_SCP_LIKE = re.compile(r"(?:[^@/:]+@)?(?P<host>[^/:]+):(?P<path>.*)")


@dataclass(frozen=True)
class LocalCheckout:
    """What the local checkout holds, compared with its remote-tracking origin/BRANCH."""

    folder: Path
    branch: str  # the checked-out branch; "" when HEAD is detached
    head: str  # full hash of HEAD; "" before the first commit
    wanted_branch: str
    upstream: str  # full hash of refs/remotes/origin/BRANCH; "" when this checkout has none
    unpushed: tuple[str, ...] = ()  # short hashes of HEAD's commits that origin/BRANCH lacks, newest first
    dirty: tuple[str, ...] = ()  # tracked paths with uncommitted changes (staged or not)
    origin_url: str = ""  # remote.origin.url as configured here; "" when there is no origin

    @property
    def short_head(self) -> str:
        return self.head[:7]

    def problems(self) -> list[str]:
        """Each way in which the workers would not run this checkout, in words (empty: they would)."""
        found = []
        if self.branch != self.wanted_branch:
            where = f"on branch '{self.branch}'" if self.branch else f"HEAD detached at {self.short_head or 'nothing'}"
            found.append(f"{where}, not '{self.wanted_branch}'")
        if not self.upstream:
            found.append(f"no origin/{self.wanted_branch} here (push it: git push -u origin {self.wanted_branch})")
        elif self.unpushed:
            found.append(f"{len(self.unpushed)} commit(s) not on origin/{self.wanted_branch}: "
                         + _listed(self.unpushed, SHOWN_COMMITS))
        if self.dirty:
            found.append(f"uncommitted changes to {len(self.dirty)} tracked file(s): " + _listed(self.dirty, SHOWN_FILES))
        return found

    def refusal(self) -> str:
        """The one-line reason a sync stops, or "" when the workers would run this checkout."""
        problems = self.problems()
        if not problems:
            return ""
        return (f"local checkout {self.folder}: " + "; ".join(problems) + f": the workers would run origin/"
                f"{self.wanted_branch} without it; push (or commit), or sync anyway with --allow-unpushed")


def _listed(items: tuple[str, ...], shown: int) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def repository_key(url: str) -> tuple[str, str]:
    """(host, path) that names the repository `url` points at, whatever the transport, user, port, trailing
    slash or .git suffix: git@github.com:o/r.git, ssh://git@github.com/o/r and https://github.com/o/r/ agree."""
    url = url.strip()
    found = _SCHEME_URL.fullmatch(url) or (None if url.startswith("/") else _SCP_LIKE.fullmatch(url))
    host, path = (found["host"].lower(), found["path"] or "") if found else ("", url)
    path = path.rstrip("/").removesuffix(".git").rstrip("/")
    return host, path.lstrip("/").removeprefix("~/")


def same_repository(url: str, other: str) -> bool:
    """Whether two git URLs name one repository (an empty URL names none)."""
    return bool(url.strip() and other.strip()) and repository_key(url) == repository_key(other)


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=False)


def _out(folder: Path, *args: str) -> str:
    done = _git(folder, *args)
    return done.stdout.strip() if done.returncode == 0 else ""


def checkout_root(folder: Path) -> Path | None:
    """The top of the git work tree holding `folder`, or None (not in a work tree, or no git here)."""
    try:
        top = _out(folder, "rev-parse", "--show-toplevel")
    except FileNotFoundError:
        return None
    return Path(top) if top else None


def inspect_checkout(folder: Path, branch: str) -> LocalCheckout | None:
    """The state of the work tree holding `folder` against origin/`branch`; None when there is none."""
    root = checkout_root(folder)
    if root is None:
        return None
    head = _out(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    upstream = _out(root, "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}^{{commit}}")
    unpushed: tuple[str, ...] = ()
    if head and upstream:
        unpushed = tuple(_out(root, "rev-list", "--abbrev-commit", "--abbrev=7", head, "--not", upstream).split())
    return LocalCheckout(folder=root, branch=_out(root, "symbolic-ref", "--quiet", "--short", "HEAD"), head=head,
                         wanted_branch=branch, upstream=upstream, unpushed=unpushed, dirty=_dirty_tracked(root),
                         origin_url=_out(root, "config", "--get", "remote.origin.url"))


def _dirty_tracked(root: Path) -> tuple[str, ...]:
    """Tracked paths whose index or work-tree copy differs from HEAD (NUL-separated: any name is safe)."""
    done = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=no", "--ignore-submodules=none")
    if done.returncode != 0:
        return ()
    entries = done.stdout.split("\0")
    paths, index = [], 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":  # a rename or copy is followed by its source path
            index += 1
    return tuple(paths)


def compare_heads(local: LocalCheckout, worker_head: str) -> str:
    """One line: where the workers' commit stands against the local HEAD."""
    short = worker_head[:7]
    if not local.head:
        return f"workers at {short}; this checkout has no commit"
    if worker_head == local.head:
        return f"workers at {short} = your HEAD"
    counts = _out(local.folder, "rev-list", "--left-right", "--count", f"{local.head}...{worker_head}")
    if not counts:
        return f"workers at {short}, your HEAD is {local.short_head} (git fetch to compare: {short} is not here)"
    ahead, behind = (int(n) for n in counts.split())
    return (f"workers at {short}, your HEAD is {local.short_head} "
            f"({ahead} commit(s) only in your HEAD, {behind} only on the workers)")

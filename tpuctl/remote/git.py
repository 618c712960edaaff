"""`tpuctl sync`: make each worker's checkout exactly origin/BRANCH, losing nothing the user had.

Two phases: a read-only preflight on every worker (is the branch there, is the folder ours to
manage), then the change. Local edits found on a worker are stashed, never thrown away.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from tpuctl.config import Target
from tpuctl.remote.shell import rpath, script

LOGS_DIR = "logs"


def _kept_paths(target: Target) -> list[str]:
    """Paths inside the checkout that sync never touches: run logs and an env file kept in the repo."""
    kept = [f"{LOGS_DIR}/"]
    repo = target.remote_repo.rstrip("/") + "/"
    if target.env_file.startswith(repo):
        kept.append(target.env_file[len(repo):])
    return kept


def _variables(target: Target) -> list[str]:
    return [f"repo={rpath(target.remote_repo)}", f"url={shlex.quote(target.repo_url)}",
            f"branch={shlex.quote(target.branch)}"]


def preflight_script(target: Target) -> str:
    """Read-only: prints `problem=...` lines for anything that must stop the sync before it starts."""
    return script(
        *_variables(target),
        "command -v git >/dev/null || { echo 'problem=git is not installed on the worker'; exit 0; }",
        'if ! out=$(git ls-remote --exit-code --heads "$url" "refs/heads/$branch" 2>&1); then',
        '  if [ -z "$out" ]; then echo "problem=branch \'$branch\' does not exist in $url"',
        '  else echo "problem=cannot read $url: $(printf %s "$out" | tail -n 1)"; fi; exit 0; fi',
        'if [ -e "$repo" ] && [ ! -d "$repo/.git" ] && [ -n "$(ls -A "$repo" 2>/dev/null)" ]; then',
        '  echo "problem=$repo exists and is not a git checkout"; exit 0; fi',
        'if [ -d "$repo/.git" ]; then origin=$(git -C "$repo" remote get-url origin 2>/dev/null || true)',
        '  [ "$origin" = "$url" ] || echo "problem=$repo tracks origin \'$origin\', not $url"; fi',
    )


def apply_script(target: Target, stash_label: str) -> str:
    kept = _kept_paths(target)
    excludes = " ".join(f"-e {shlex.quote(path)}" for path in kept)
    pathspec = " ".join(shlex.quote(f":(exclude){path.rstrip('/')}") for path in kept)
    return script(
        *_variables(target),
        'if [ ! -d "$repo/.git" ]; then mkdir -p "$repo"; git clone --quiet --branch "$branch" "$url" "$repo"; fi',
        'cd "$repo"',
        f'if [ -n "$(git status --porcelain -- . {pathspec})" ]; then',
        f"  git stash push --quiet --include-untracked -m {shlex.quote(stash_label)} -- . {pathspec}",
        '  echo "stashed=$(git rev-parse --short \'stash@{0}\')"; fi',
        "git fetch --all --prune --quiet",
        'git checkout --quiet -B "$branch" "origin/$branch"',
        'git reset --hard --quiet "origin/$branch"',
        f"git clean -fd --quiet {excludes}",
        'echo "head=$(git rev-parse HEAD)"',
        'echo "status=$(git status -sb | head -n 1)"',
    )


@dataclass(frozen=True)
class SyncResult:
    head: str
    status: str
    stashed: str = ""

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


def parse_sync(text: str) -> SyncResult:
    found = parse_fields(text)
    return SyncResult(head=found.get("head", ""), status=found.get("status", ""), stashed=found.get("stashed", ""))

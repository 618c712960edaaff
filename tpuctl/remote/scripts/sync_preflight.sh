# --- sync_preflight.sh (read-only): `problem=` lines stop the sync before it changes anything on any
# worker; `warning=` lines are shown.
# params: repo url branch force
# uses: paths runs

export GIT_TERMINAL_PROMPT=0
command -v git >/dev/null || { echo 'problem=git is not installed on the worker'; exit 0; }

# git_error OUTPUT: git's own reason (its first fatal:/error: line), not the generic advice after it.
git_error() {
  local reason
  reason=$(printf '%s\n' "$1" | grep -m 1 -E '^(fatal|error|ERROR):' || true)
  printf '%s\n' "${reason:-$(printf '%s\n' "$1" | tail -n 1)}"
}

if ! out=$(git ls-remote --exit-code --heads -- "$url" "refs/heads/$branch" 2>&1); then
  if [ -z "$out" ]; then
    echo "problem=branch '$branch' does not exist in $url"
  else
    echo "problem=cannot read $url: $(git_error "$out")"
  fi
  exit 0
fi
checkout=$(expand_home "$repo")
if [ -e "$checkout" ] && [ ! -d "$checkout/.git" ] && [ -n "$(ls -A "$checkout" 2>/dev/null)" ]; then
  echo "problem=$repo exists and is not a git checkout"
  exit 0
fi
[ -d "$checkout/.git" ] || exit 0
origin=$(git -C "$checkout" remote get-url origin 2>/dev/null || true)
[ "$origin" = "$url" ] || echo "problem=$repo tracks origin '$origin', not $url"
cd "$checkout"
while IFS= read -r name; do
  if [ "$force" = 1 ]; then
    echo "warning=run '$name' is alive; syncing the checkout under it anyway (--force)"
  else
    echo "problem=run '$name' is alive: a sync would change the checkout under it; stop it first (tpuctl stop --name $name) or sync --force"
  fi
done < <(live_runs)

# --- sync_preflight.sh (read-only): `problem=` lines stop the sync before it changes anything on any
# worker; `warning=` lines are shown.
# params: repo url branch force env_file deploy_key token_origin git_host_keys
# uses: paths runs git_auth

command -v git >/dev/null || { echo 'problem=git is not installed on the worker'; exit 0; }
git_auth_begin

if ! out=$(git ls-remote --exit-code --heads -- "$url" "refs/heads/$branch" 2>&1); then
  if [ -z "$out" ]; then
    echo "problem=branch '$branch' does not exist in $url"
  else
    echo "problem=$(git_fetch_problem "$out" "$url")"
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

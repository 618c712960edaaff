# --- sync_apply.sh: make the checkout exactly origin/BRANCH, losing nothing. Local edits are stashed,
# except logs/ and the secret env files, which are never stashed or cleaned (the paths are resolved
# here, on the worker); commits that only the worker has are kept under refs/tpuctl/backup/STAMP.
# params: repo url branch env_file stash_label stamp
# uses: paths

export GIT_TERMINAL_PROMPT=0
checkout=$(expand_home "$repo")
if [ ! -d "$checkout/.git" ]; then
  mkdir -p -- "$checkout"
  git clone --quiet --branch "$branch" -- "$url" "$checkout"
fi
cd "$checkout"

keep=(":(exclude,literal)logs")
secret=$(expand_home "$env_file")
for path in "$secret" "$secret.previous" "$secret.values"; do
  if relative=$(inside_checkout "$path"); then keep+=(":(exclude,literal)$relative"); fi
done

if [ -n "$(git status --porcelain -- . "${keep[@]}")" ]; then
  git stash push --quiet --include-untracked -m "$stash_label" -- . "${keep[@]}"
  echo "stashed=$(git rev-parse --short 'stash@{0}')"
fi
git fetch --all --prune --quiet
upstream="refs/remotes/origin/$branch"

# save_unpushed REF NAME: REF's commits that origin/BRANCH lacks stay reachable, as NAME.
save_unpushed() {
  local commit count
  commit=$(git rev-parse -q --verify "$1^{commit}") || return 0
  count=$(git rev-list --count "$upstream..$commit")
  [ "$count" -gt 0 ] || return 0
  git update-ref "$2" "$commit" ""
  echo "backup=$2 ($count commit(s) not on origin/$branch)"
}
save_unpushed HEAD "refs/tpuctl/backup/$stamp"
if [ "$(git rev-parse -q --verify HEAD || true)" != "$(git rev-parse -q --verify "refs/heads/$branch" || true)" ]; then
  save_unpushed "refs/heads/$branch" "refs/tpuctl/backup/$stamp-branch"
fi

git checkout --quiet -B "$branch" "$upstream" --
git reset --hard --quiet "$upstream"
git clean -fd --quiet -- . "${keep[@]}"
echo "head=$(git rev-parse HEAD)"
echo "status=$(git status -sb | head -n 1)"

# --- sync_apply.sh: make the checkout exactly origin/BRANCH, losing nothing. Local edits are stashed,
# except logs/ and the secret env files, which are never stashed or cleaned (the paths are resolved
# here, on the worker); commits that only the worker has are kept under refs/tpuctl/backup/STAMP.
# Submodules follow (`git submodule update --init --recursive`), and Git LFS files when the branch
# uses LFS: a worker without git-lfs then refuses before anything in the checkout changes.
# params: repo url branch env_file stash_label stamp deploy_key token_origin git_host_keys
# uses: paths git_auth

git_auth_begin
checkout=$(expand_home "$repo")
fresh=0
if [ ! -d "$checkout/.git" ]; then
  mkdir -p -- "$checkout"
  git clone --quiet --no-checkout --branch "$branch" -- "$url" "$checkout"
  fresh=1
fi
cd "$checkout"
git fetch --all --prune --quiet
upstream="refs/remotes/origin/$branch"

attributes=$(git show "$upstream:.gitattributes" 2>/dev/null || true)
lfs=0
if [[ $attributes == *filter=lfs* ]]; then
  lfs=1
  if ! git lfs version > /dev/null 2>&1; then
    echo "refused=origin/$branch stores files in Git LFS and git-lfs is not installed on the worker: install it (sudo apt-get install -y git-lfs) and sync again"
    exit 0
  fi
  export GIT_LFS_SKIP_SMUDGE=1  # the files come with `git lfs pull` below, after the checkout
fi

keep=(":(exclude,literal)logs")
secret=$(expand_home "$env_file")
for path in "$secret" "$secret.previous" "$secret.values"; do
  if relative=$(inside_checkout "$path"); then keep+=(":(exclude,literal)$relative"); fi
done

if [ "$fresh" = 0 ] && [ -n "$(git status --porcelain -- . "${keep[@]}")" ]; then
  git stash push --quiet --include-untracked -m "$stash_label" -- . "${keep[@]}"
  echo "stashed=$(git rev-parse --short 'stash@{0}')"
fi
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
if [ -f .gitmodules ]; then
  git submodule sync --quiet --recursive
  git submodule update --init --recursive --force --quiet
fi
if [ "$lfs" = 1 ]; then
  git lfs install --local --skip-smudge > /dev/null
  git lfs pull
fi
echo "head=$(git rev-parse HEAD)"
echo "status=$(git status -sb | head -n 1)"

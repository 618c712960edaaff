# --- lib/git_auth.sh: the credentials git may use for a sync, in this script's environment only
# (it ends with the script: nothing is written into the checkout's .git/config or the remote URL).
# Needs the params env_file, deploy_key, token_origin and git_host_keys.
#   SSH: git's ssh checks the git host's key against git_host_keys alone (pinned lines for the common
#        hosts plus the target's own), never asks, never accepts a new key. With a deploy key it uses
#        only that key (no agent, no other identity); otherwise a forwarded agent if there is one.
#   HTTPS: a credential helper answers with GIT_TOKEN (or GITHUB_TOKEN) read from the env file's
#        NUL-separated records at the moment git asks, and only for token_origin (the scheme and
#        host of repo_url); every other helper the worker has configured is switched off, so none
#        can store the token. The token is never in argv, a URL, a config file or git's output.

# sh_word TEXT: TEXT as one word of POSIX sh (git runs GIT_SSH_COMMAND and helpers through sh).
sh_word() {
  local quote="'"
  printf "'%s'" "${1//$quote/$quote\\$quote$quote}"
}

# git_credential_from_env [get|store|erase]: a git credential helper (see git-credential(1)); run as
# its own bash process by git, it reads the request on stdin and the env records from the file
# named by TPUCTL_GIT_ENV_VALUES.
git_credential_from_env() {
  [ "${1:-}" = get ] || return 0
  local line protocol="" host="" token="" github_token="" user="x-access-token" record
  while IFS= read -r line && [ -n "$line" ]; do
    case $line in
      protocol=*) protocol=${line#protocol=} ;;
      host=*) host=${line#host=} ;;
    esac
  done
  [ "$protocol://$host" = "$TPUCTL_GIT_TOKEN_ORIGIN" ] || return 0
  [ -r "$TPUCTL_GIT_ENV_VALUES" ] || return 0
  while IFS= read -r -d '' record; do
    case $record in
      GIT_TOKEN=*) token=${record#GIT_TOKEN=} ;;
      GITHUB_TOKEN=*) github_token=${record#GITHUB_TOKEN=} ;;
      GIT_USERNAME=*) user=${record#GIT_USERNAME=} ;;
    esac
  done < "$TPUCTL_GIT_ENV_VALUES"
  token=${token:-$github_token}
  case $token$user in *$'\n'*|*$'\r'*) return 0 ;; esac  # a line break would forge more protocol lines
  [ -n "$token" ] || return 0
  printf 'username=%s\npassword=%s\n' "$user" "$token"
}

# git_auth_begin: export the SSH command and the credential helper for every git command that follows.
git_auth_begin() {
  export GIT_TERMINAL_PROMPT=0 GIT_ASKPASS="" SSH_ASKPASS=""  # empty: git asks no program, fails instead
  git_auth_dir=$(mktemp -d)
  trap 'rm -rf -- "$git_auth_dir"' EXIT
  if [ "${#git_host_keys[@]}" -gt 0 ]; then printf '%s\n' "${git_host_keys[@]}"; fi > "$git_auth_dir/known_hosts"
  local ssh_command key helper
  ssh_command="ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null"
  ssh_command+=" -o UserKnownHostsFile=$(sh_word "$git_auth_dir/known_hosts")"
  if [ -n "$deploy_key" ]; then
    key=$(expand_home "$deploy_key")
    ssh_command+=" -o IdentitiesOnly=yes -o IdentityAgent=none -i $(sh_word "$key")"
  fi
  export GIT_SSH_COMMAND="$ssh_command" GIT_SSH_VARIANT=ssh
  { declare -f git_credential_from_env; echo 'git_credential_from_env "$@"'; } > "$git_auth_dir/credential_helper"
  TPUCTL_GIT_ENV_VALUES="$(expand_home "$env_file").values"
  export TPUCTL_GIT_ENV_VALUES TPUCTL_GIT_TOKEN_ORIGIN="$token_origin"
  export GIT_CONFIG_COUNT=2 GIT_CONFIG_KEY_0=credential.helper GIT_CONFIG_VALUE_0=""
  helper="!bash $(sh_word "$git_auth_dir/credential_helper")"
  export GIT_CONFIG_KEY_1=credential.helper GIT_CONFIG_VALUE_1="$helper"
}

# git_fetch_problem OUTPUT URL: one line saying why git could not read URL, and what to set up when
# the reason is missing credentials or an unknown host key.
git_fetch_problem() {
  local reason
  reason=$(printf '%s\n' "$1" | grep -m 1 -E '^(fatal|error|ERROR|remote):|Permission denied|Host key verification failed' || true)
  reason=${reason:-$(printf '%s\n' "$1" | tail -n 1)}
  reason=${reason//$'\r'/}  # ssh ends its lines with \r\n: a bare \r would split this one
  case $1 in
    *"Host key verification failed"*|*"No ED25519 host key is known"*|*"host key is known for"*)
      echo "cannot read $2: the git host's SSH key is not pinned, or not the pinned one ($reason): check its fingerprint, then add its known_hosts line to git_host_keys in tpuctl.toml (see sops/private-repo.md)" ;;
    *"Permission denied"*|*"could not read Username"*|*"Authentication failed"*|*"epository not found"*|*"terminal prompts disabled"*|*"Invalid username or password"*)
      echo "cannot read $2 without credentials ($reason): set up one of forward_agent = true (--forward-agent), deploy_key = \"~/.ssh/KEY\" in tpuctl.toml, or GIT_TOKEN in the .env for an https URL (tpuctl secrets push); see sops/private-repo.md" ;;
    *) echo "cannot read $2: $reason" ;;
  esac
}

# --- runner.sh, the detached runner of one run (logs/NAME_STAMP.sh): record who it is, load the env
# values, activate Python, clear a stale libtpu lock, run the command, and always write the exit file.
# The command is told where its metrics.jsonl link goes (TPUCTL_METRICS_LINK, trainer.metrics_log).
# The secrets are loaded from the NUL-separated records `secrets push` wrote: data, never parsed by a
# shell, so the run sees each value exactly as python-dotenv read it.
# params: repo base env_file run_env venv conda_env assignments argv tpu_lockfile device_patterns
# uses: paths runs tpu tpu_lock python

set +eu  # nothing may stop the runner before it writes the exit file
cd "$(expand_home "$repo")" || exit 97
printf '%s\n' "$$" > "$base.pid.tmp" && mv -f "$base.pid.tmp" "$base.pid"
printf '%s %s\n' "$(boot_id)" "$(start_time "$$")" > "$base.identity.tmp" && mv -f "$base.identity.tmp" "$base.identity"

write_exit() { printf '%s\n' "$1" > "$base.exit.tmp" && mv -f "$base.exit.tmp" "$base.exit"; }

# load_env_values FILE: export each KEY=VALUE record of FILE (records end with NUL bytes).
load_env_values() {
  local record
  [ -f "$1" ] || return 0
  while IFS= read -r -d '' record; do
    if [[ $record =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then export "${record?}"; fi
  done < "$1"
}

{
  load_env_values "$(expand_home "$env_file").values"
  for assignment in "${run_env[@]}"; do export "${assignment?}"; done
  lock_state=$(clear_stale_tpu_lock)
  if [ "$lock_state" != absent ]; then echo "tpuctl: libtpu lock file $tpu_lockfile: $lock_state"; fi
} >> "$base.log" 2>&1

(
  activate_python || exit 98
  export TPUCTL_METRICS_LINK="$PWD/$base.metrics.jsonl"
  for assignment in "${assignments[@]}"; do export "${assignment?}"; done
  exec "${argv[@]}"
) >> "$base.log" 2>&1 < /dev/null &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM HUP INT
# `wait` returns early when a trapped signal arrives; loop until the child is really reaped.
while :; do
  wait "$child"
  rc=$?
  kill -0 "$child" 2>/dev/null || break
done
write_exit "$rc"

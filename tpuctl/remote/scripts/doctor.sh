# --- doctor.sh, for `tpuctl doctor`: who holds the TPU on this worker, and libtpu's lock file.
# Without kill_pids it only looks. With kill_pids (PID:START pairs the user saw and confirmed), it
# signals each of those pids only after verifying, just before each signal, that the pid still has that
# start time (not a recycled pid) and still holds a TPU device: TERM, up to grace_s seconds, then KILL.
# The lock file is removed only when, afterwards, provably nothing holds the devices.
# Prints: holder=PID START USER AGE_S RUN CMD_BASE64 (RUN: the tpuctl run it belongs to, or -),
# holders_unknown=0|1, lock=absent | lock=present AGE_S; with kill_pids also term=, kill=, gone=,
# skipped=PID reason, and lock_after=<what clear_stale_tpu_lock did>.
# params: repo device_patterns tpu_lockfile kill_pids grace_s
# uses: paths runs tpu tpu_lock

clock_ticks=$(getconf CLK_TCK)

# run_of PGID: the name of the live tpuctl run whose process group is PGID, or -.
run_of() {
  local repo_dir link name base
  repo_dir=$(expand_home "$repo")
  for link in "$repo_dir"/logs/*_latest.log; do
    [ -L "$link" ] || continue
    name=${link##*/}
    name=${name%_latest.log}
    base=$(cd "$repo_dir" && latest_base "$name") || continue
    if [ "$(cd "$repo_dir" && run_pid "$base")" = "$1" ] && (cd "$repo_dir" && run_alive "$base"); then
      printf '%s\n' "$name"
      return 0
    fi
  done
  printf -- '-\n'
}

# describe PID: one holder= line, nothing for a pid that is gone.
describe() {
  local started stat fields up user age
  started=$(start_time "$1")
  [ -n "$started" ] || return 0
  read -r stat 2>/dev/null < "/proc/$1/stat" || return 0
  read -r -a fields <<< "${stat##*) }"
  read -r up _ < /proc/uptime
  user=$(stat -c %U "/proc/$1" 2>/dev/null || echo '?')
  age=$(( ${up%.*} - started / clock_ticks ))
  printf 'holder=%s %s %s %s %s %s\n' "$1" "$started" "$user" "$age" "$(run_of "${fields[2]}")" \
    "$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | head -c 400 | base64 -w0)"
}

# still_holder PID START: PID is the same process (same start time) and holds a TPU device now.
still_holder() {
  [ "$(start_time "$1")" = "$2" ] || return 1
  tpu_scan
  [[ " $holders " == *" $1 "* ]]
}

lock_line() {
  local modified now
  if [ ! -e "$tpu_lockfile" ]; then echo "lock=absent"; return 0; fi
  modified=$(stat -c %Y "$tpu_lockfile" 2>/dev/null || echo 0)
  now=$(date +%s)
  echo "lock=present $(( now - modified ))"
}

if [ "${#kill_pids[@]}" -eq 0 ]; then
  tpu_scan
  for pid in $holders; do describe "$pid"; done
  echo "holders_unknown=$holders_unknown"
  lock_line
  exit 0
fi

signalled=()
for pair in "${kill_pids[@]}"; do
  pid=${pair%%:*}
  started=${pair#*:}
  if ! valid_pid "$pid" || ! [[ $started =~ ^[0-9]+$ ]]; then echo "skipped=$pair not a PID:START pair"; continue; fi
  if ! still_holder "$pid" "$started"; then echo "skipped=$pid no longer the process that held the TPU"; continue; fi
  kill -TERM "$pid" 2>/dev/null && echo "term=$pid" && signalled+=("$pair")
done
deadline=$(( $(date +%s) + grace_s ))
for pair in "${signalled[@]}"; do
  pid=${pair%%:*}
  started=${pair#*:}
  while [ "$(start_time "$pid")" = "$started" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
  if [ "$(start_time "$pid")" = "$started" ]; then
    kill -KILL "$pid" 2>/dev/null && echo "kill=$pid"
    for _ in $(seq 50); do [ "$(start_time "$pid")" = "$started" ] || break; sleep 0.1; done
  fi
  if [ "$(start_time "$pid")" != "$started" ]; then echo "gone=$pid"; fi
done
echo "lock_after=$(clear_stale_tpu_lock)"

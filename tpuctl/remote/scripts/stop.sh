# --- stop.sh: stop the newest run named NAME. TERM its process group, wait up to the grace period,
# then KILL. Only a group verified to be the run's (same boot, the runner's recorded start time) is
# ever signalled, and never a pid of 0 or 1. Then clear libtpu's lock file if nobody holds the TPU.
# params: repo name ticks tpu_lockfile device_patterns
# uses: paths runs tpu tpu_lock

if ! cd "$(expand_home "$repo")" 2>/dev/null || ! base=$(latest_base "$name"); then
  echo "state=none"
  echo "lock=$(clear_stale_tpu_lock)"
  exit 0
fi
pid=$(run_pid "$base")
if run_alive "$base" && valid_pid "$pid"; then
  kill -TERM -- "-$pid" 2>/dev/null || true
  echo "signal=TERM"
  for _ in $(seq "$ticks"); do run_alive "$base" || break; sleep 0.1; done
  if run_alive "$base"; then
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "signal=KILL"
    for _ in $(seq 50); do run_alive "$base" || break; sleep 0.1; done
  fi
  # A runner killed outright cannot write its exit file: record the kill for it.
  [ -e "$base.exit" ] || { printf '137\n' > "$base.exit.tmp" && mv -f "$base.exit.tmp" "$base.exit"; }
elif lock_held "logs/$name.lock"; then
  echo "signal=unverified"
else
  echo "signal=none"
fi
echo "lock=$(clear_stale_tpu_lock)"

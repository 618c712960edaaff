# --- lib/tpu_lock.sh: libtpu's lock file, removed only when nobody holds the TPU (uses lib/tpu.sh and
# the variable tpu_lockfile).

# clear_stale_tpu_lock: remove libtpu's lock file only when provably no process holds the TPU.
# Prints what happened: absent | removed | kept (held by pid(s) N) | kept (cannot see ...).
clear_stale_tpu_lock() {
  if [ ! -e "$tpu_lockfile" ]; then echo absent; return 0; fi
  tpu_scan
  if [ -n "$holders" ]; then
    echo "kept (held by $holders)"
  elif [ "$holders_unknown" = 1 ]; then
    echo "kept (cannot see every process's open files: not root)"
  else
    rm -f -- "$tpu_lockfile"
    echo removed
  fi
}

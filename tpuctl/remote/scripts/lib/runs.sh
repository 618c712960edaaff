# --- lib/runs.sh: is a run alive? Checked so that a reboot, a recycled pid or a zombie never reads as
# the run. A run's files are logs/NAME_STAMP.*: .pid holds its runner's pid (also its process group:
# setsid), .identity the boot id and the runner's start time. Its runner holds logs/NAME.lock (flock)
# from launch to its last process's end.

boot_id() { cat /proc/sys/kernel/random/boot_id; }

# start_time PID: when PID started (field 22 of /proc/PID/stat, clock ticks since boot); nothing for a
# process that is gone or a zombie. Field 2, the command name, may hold spaces and parentheses.
start_time() {
  local stat fields
  read -r stat 2>/dev/null < "/proc/$1/stat" || return 0
  read -r -a fields <<< "${stat##*) }"
  if [ "${fields[0]}" != Z ]; then printf '%s\n' "${fields[19]}"; fi
}

# valid_pid TEXT: a plain decimal pid above 1. Never 0, 1, a negative number or a list: `kill -- -1`
# would signal every process.
valid_pid() { [[ $1 =~ ^[1-9][0-9]{0,8}$ ]] && [ "$1" -gt 1 ]; }

# group_alive PGID: a process of group PGID that is not a zombie.
group_alive() {
  local stat_file stat fields
  for stat_file in /proc/[0-9]*/stat; do
    read -r stat 2>/dev/null < "$stat_file" || continue
    read -r -a fields <<< "${stat##*) }"
    if [ "${fields[2]}" = "$1" ] && [ "${fields[0]}" != Z ]; then return 0; fi
  done
  return 1
}

# run_alive BASE: the run whose files are BASE.* is alive: it started in this boot, and its runner
# still runs with the recorded start time, or has gone and left members of its process group (the
# kernel never hands out a pid again while a group of that id has members).
run_alive() {
  local pid boot started now
  pid=$(head -c 32 "$1.pid" 2>/dev/null) || return 1
  valid_pid "$pid" || return 1
  read -r boot started 2>/dev/null < "$1.identity" || return 1
  if [ -z "$started" ] || [ "$boot" != "$(boot_id)" ]; then return 1; fi
  now=$(start_time "$pid")
  if [ -n "$now" ]; then [ "$now" = "$started" ]; else group_alive "$pid"; fi
}

# lock_held FILE: a process holds FILE's flock. Tested with a shared lock, released at once.
lock_held() { [ -e "$1" ] && ! flock -n -s 8 8< "$1"; }

# latest_base NAME: logs/NAME_STAMP of the newest run named NAME (from its NAME_latest.log link).
latest_base() {
  local link
  link=$(readlink "logs/${1}_latest.log" 2>/dev/null) || return 1
  case $link in
    */*) return 1 ;;
    "${1}_"*.log) printf 'logs/%s\n' "${link%.log}" ;;
    *) return 1 ;;
  esac
}

# run_pid BASE: the pid recorded for the run, digits only, for messages.
run_pid() { head -c 32 "$1.pid" 2>/dev/null | tr -dc '0-9' || true; }

# live_runs: the names of the runs in logs/ that are alive, by their lock or their verified group.
live_runs() {
  local link name base
  for link in logs/*_latest.log; do
    [ -L "$link" ] || continue
    name=${link#logs/}
    name=${name%_latest.log}
    if lock_held "logs/$name.lock" || { base=$(latest_base "$name") && run_alive "$base"; }; then
      printf '%s\n' "$name"
    fi
  done
}

# --- lib/tpu.sh: who holds the TPU (open file descriptors on its device files). Uses the variable
# device_patterns (globs of device files).

# tpu_scan: sets `holders` (the pids holding a TPU device, space-separated) and `holders_unknown`
# (1 when a user other than root could not read some process's open files: a root process holding
# the TPU would then be invisible, so nothing may be concluded from seeing none). Root reads every
# process's files on a VM; what even root may not read (a sandbox's own init) is not counted.
tpu_scan() {
  local tests=() pattern line found=() root=0
  for pattern in "${device_patterns[@]}"; do tests+=(-o -lname "$pattern"); done
  if [ "$(id -u)" = 0 ]; then root=1; fi
  holders_unknown=0
  while IFS= read -r line; do
    case $line in
      "held /proc/"*) found+=("${line#held /proc/}") ;;
      *"Permission denied"*) if [ "$root" = 0 ]; then holders_unknown=1; fi ;;
    esac
  done < <(find /proc/[0-9]*/fd -maxdepth 1 \( "${tests[@]:1}" \) -printf 'held %h\n' 2>&1 || true)
  holders=$(printf '%s\n' "${found[@]%/fd}" | grep -E '^[0-9]+$' | sort -un | tr '\n' ' ' || true)
  holders=${holders% }
}

# --- launch_preflight.sh (read-only), on every worker before any starts: `problem=` lines refuse the
# launch, `warning=` lines are shown.
# params: repo name env_file venv conda_env device_patterns
# uses: paths runs tpu python

cd "$(expand_home "$repo")" 2>/dev/null || { echo "problem=no checkout at $repo: run tpuctl sync first"; exit 0; }
base=$(latest_base "$name" || true)
if lock_held "logs/$name.lock" || { [ -n "$base" ] && run_alive "$base"; }; then
  echo "problem=run '$name' is still running (pid $(run_pid "$base")): stop it first with tpuctl stop --name $name"
fi
tpu_scan
[ -z "$holders" ] || echo "problem=the TPU is held by pid(s) $holders: stop them first (tpuctl stop, or kill them)"
[ "$holders_unknown" = 0 ] || echo "warning=cannot see every process's open files (not root): another process may hold the TPU"
[ -f "$(expand_home "$env_file").values" ] || echo "warning=no env file at $env_file: run tpuctl secrets push"
if ! failure=$( (activate_python) 2>&1 >/dev/null); then
  echo "problem=cannot activate the Python environment: $(printf '%s\n' "$failure" | tail -n 1)"
fi

# --- status.sh: the newest run named NAME: state=running|exited|vanished|none, and its pid, log, exit
# code, last step line and meta data, one key=value per line.
# params: repo name
# uses: paths runs

cd "$(expand_home "$repo")" 2>/dev/null || { echo "state=none"; exit 0; }
base=$(latest_base "$name") || { echo "state=none"; exit 0; }
echo "log=$PWD/$base.log"
echo "pid=$(run_pid "$base")"
if [ -f "$base.exit" ]; then
  echo "state=exited"
  echo "exit=$(head -c 32 "$base.exit" | tr -dc '0-9-' || true)"
elif run_alive "$base"; then
  echo "state=running"
else
  echo "state=vanished"
fi
echo "step=$(tac "$base.log" 2>/dev/null | grep -a -m 1 -E '(^|[[:space:]])step=[0-9]+ ' || true)"
if [ -f "$base.meta.json" ]; then echo "meta=$(tr -d '\n' < "$base.meta.json")"; fi

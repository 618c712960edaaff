# --- run_state.sh, for tail: the state of one run by its files' base path: state=exited|running|vanished.
# params: base
# uses: runs

if [ -f "$base.exit" ]; then
  echo "state=exited"
elif run_alive "$base"; then
  echo "state=running"
else
  echo "state=vanished"
fi

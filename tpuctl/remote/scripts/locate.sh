# --- locate.sh, for tail: the files of the newest run named NAME, as base=/abs/logs/NAME_STAMP, so
# that following it never switches to a newer run's log.
# params: repo name
# uses: paths runs

cd "$(expand_home "$repo")" 2>/dev/null || { echo 'missing=no checkout'; exit 0; }
base=$(latest_base "$name") || { echo 'missing=no run'; exit 0; }
echo "base=$PWD/$base"

# --- launch.sh: start one run detached, at most one per name. This script takes the lock
# logs/NAME.lock; the runner inherits it and holds it for as long as it, or anything it started,
# lives. The run's files are created with noclobber: nothing of another run is ever overwritten.
# The runner arrives base64-encoded, as data: no line of it can end or escape anything here.
# params: repo name base meta runner
# uses: paths

cd "$(expand_home "$repo")"
mkdir -p logs
exec 9>> "logs/$name.lock"
if ! flock -w 2 9; then
  echo "refused=run '$name' is still running: stop it first with tpuctl stop --name $name"
  exit 0
fi
set -o noclobber
if ! { : > "$base.log"; } 2>/dev/null; then
  echo "refused=the files of run $base exist already (a launch of the same name in the same second?)"
  exit 0
fi
printf '%s' "$runner" | base64 -d > "$base.sh"
head=$(git rev-parse HEAD 2>/dev/null || echo unknown)
printf '%s, "git_head": "%s", "started_at": "%s"}\n' "$meta" "$head" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$base.meta.json"
for ext in log exit pid identity meta.json; do
  ln -sfn "${base#logs/}.$ext" "logs/.latest.$$"
  mv -Tf "logs/.latest.$$" "logs/${name}_latest.$ext"
done
setsid nohup bash "$base.sh" > /dev/null 2>&1 < /dev/null &
for _ in $(seq 100); do
  if [ -s "$base.identity" ]; then break; fi
  sleep 0.05
done
echo "pid=$(head -c 32 "$base.pid" 2>/dev/null | tr -dc '0-9' || true)"
echo "log=$PWD/$base.log"

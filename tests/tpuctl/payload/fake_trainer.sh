#!/usr/bin/env bash
# Stands in for `trainer` in the tpuctl tests: prints an effective config and step lines like the
# real one. Usage: fake_trainer.sh [--steps N] [--sleep S] [--exit CODE] [--raise] [--ignore-term]
steps=2; pause=0; code=0; raise=""
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift ;;
    --sleep) pause=$2; shift ;;
    --exit) code=$2; shift ;;
    --raise) raise=1 ;;
    --ignore-term) trap '' TERM ;;
  esac
  shift
done
printf 'model_path: tiny\nrollout:\n  backend: %s\n  batch_size: 1\nsteps: %s\n' "${ROLLOUT_BACKEND:-sglang_jax}" "$steps"
echo "wandb key present: ${WANDB_API_KEY:+yes}"
for ((i = 0; i < steps; i++)); do
  echo "step=$i loss=0.000000 entropy=0.2363 reward_mean=0.1250 dt=0.0${i}s"
  sleep "$pause"
done
if [ -n "$raise" ]; then
  printf 'Traceback (most recent call last):\n  File "trainer.py", line 1, in <module>\nValueError: reward shape mismatch\n'
  exit 1
fi
exit "$code"

# The README's two set-up commands are `make demo` (the main job) and `make test`; bench and lint too.
# Each target sets up what it needs on a fresh machine first.
.PHONY: setup demo test bench bench-peers lint

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/python -m tpuctl.sim.demo

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python bench/cli_startup.py
	.venv/bin/python bench/status_fanout.py
	.venv/bin/python bench/trainer_sampler.py
	.venv/bin/python bench/trainer_update.py
	.venv/bin/python bench/rollout_sglang_vs_jax.py

# This trainer against TRL and tunix on one workload (bench/peers/run.py): builds the peers' environments
# in .bench-envs/ (about 3 GB, once), then several minutes of interleaved runs. Not part of `make test`.
bench-peers: setup
	.venv/bin/python bench/peers/run.py

lint: setup
	.venv/bin/ruff check tpuctl trainer tests bench

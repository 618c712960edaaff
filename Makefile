# The two set-up commands of the README. Each sets up what it needs on a fresh machine first.
.PHONY: setup test demo bench

setup:
	scripts/setup.sh

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python bench/cli_startup.py
	.venv/bin/python bench/status_fanout.py

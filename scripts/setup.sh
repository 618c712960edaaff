#!/usr/bin/env bash
# Set up a fresh Debian machine for this project: sshd (the tests start their own), a Python 3.12
# virtual environment in .venv, and the project with its CPU training stack and test tools.
# Idempotent: a second run only reinstalls the project. PYTHON=/path/to/python3.12 overrides discovery.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! [ -x /usr/sbin/sshd ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
fi

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 \
                   /usr/local/bin/python3.12 /usr/bin/python3.12; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  echo "error: Python 3.12 not found (sglang-jax needs it); set PYTHON=/path/to/python3.12" >&2
  return 1
}

if ! [ -x .venv/bin/python ]; then
  "$(find_python)" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e '.[dev,cpu]'

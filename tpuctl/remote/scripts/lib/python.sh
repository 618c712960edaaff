# --- lib/python.sh: the target's Python environment. Uses the variables venv and conda_env (at most one set).

# activate_python: activate the venv or the conda env (found through `conda info --base` or the usual
# install folders), or nothing when neither is set. On failure says why on stderr and returns 98.
activate_python() {
  local folder base flags=$-
  set +eu  # activate scripts and conda.sh read unset variables and run commands that may fail
  if [ -n "$venv" ]; then
    folder=$(expand_home "$venv")
    if [ ! -f "$folder/bin/activate" ]; then
      printf 'venv %s not found\n' "$venv" >&2
      restore_flags "$flags"
      return 98
    fi
    # shellcheck source=/dev/null
    . "$folder/bin/activate"
  elif [ -n "$conda_env" ]; then
    for base in "$(conda info --base 2>/dev/null || true)" "$HOME/miniconda3" "$HOME/anaconda3" /opt/conda; do
      if [ -n "$base" ] && [ -f "$base/etc/profile.d/conda.sh" ]; then
        # shellcheck source=/dev/null
        . "$base/etc/profile.d/conda.sh"
        break
      fi
    done
    if ! conda activate "$(expand_home "$conda_env")"; then
      printf 'conda env %s not found\n' "$conda_env" >&2
      restore_flags "$flags"
      return 98
    fi
  fi
  restore_flags "$flags"
}

# restore_flags FLAGS: turn errexit and nounset back on if FLAGS (a saved $-) had them.
restore_flags() {
  if [[ $1 == *e* ]]; then set -e; fi
  if [[ $1 == *u* ]]; then set -u; fi
}

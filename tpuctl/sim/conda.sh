# shellcheck shell=bash
# A stand-in for <conda base>/etc/profile.d/conda.sh on a simulated TPU VM (tpuctl.sim.conda): like
# the real file it defines the `conda` shell function, here for the two uses tpuctl makes of it.
# `conda activate NAME|PREFIX` sources the venv at BASE/envs/NAME (or PREFIX) and sets
# CONDA_DEFAULT_ENV and CONDA_PREFIX; `conda info --base` prints BASE.
_TPUCTL_SIM_CONDA_BASE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

conda() {
  local prefix
  case "${1:-} ${2:-}" in
    "info --base")
      printf '%s\n' "$_TPUCTL_SIM_CONDA_BASE"
      ;;
    "activate "?*)
      case $2 in
        /*) prefix=$2 ;;
        *) prefix=$_TPUCTL_SIM_CONDA_BASE/envs/$2 ;;
      esac
      if [ ! -f "$prefix/bin/activate" ]; then
        printf 'EnvironmentNameNotFound: Could not find conda environment: %s\n' "$2" >&2
        return 1
      fi
      # shellcheck source=/dev/null
      . "$prefix/bin/activate"
      export CONDA_DEFAULT_ENV="$2" CONDA_PREFIX="$prefix"
      ;;
    *)
      echo "conda (tpuctl.sim stand-in): only 'conda activate ENV' and 'conda info --base'" >&2
      return 1
      ;;
  esac
}

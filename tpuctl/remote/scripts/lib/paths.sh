# --- lib/paths.sh: paths as the user wrote them, resolved on this worker

# expand_home PATH: `~` and `~/...` are this worker's $HOME; any other path is taken literally.
expand_home() {
  case $1 in
    \~) printf '%s\n' "$HOME" ;;
    \~/*) printf '%s\n' "$HOME/${1#\~/}" ;;
    *) printf '%s\n' "$1" ;;
  esac
}

# inside_checkout PATH: PATH relative to the current folder (a checkout) when it lies inside it, its
# folder resolved here (symlinks, /abs/home versus ~); fails for a path outside. The last component
# is not resolved: a symlinked secret file inside the checkout is still that file.
inside_checkout() {
  local top folder relative
  top=$(pwd -P)
  folder=$(realpath -m -- "$(dirname -- "$1")")
  case $folder/ in
    "$top"/*) ;;
    *) return 1 ;;
  esac
  relative="${folder#"$top"}/$(basename -- "$1")"
  printf '%s\n' "${relative#/}"
}

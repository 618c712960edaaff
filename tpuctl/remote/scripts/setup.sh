# --- setup.sh, for `tpuctl setup`: the training environment on this worker, from the synced checkout.
# A venv target gets its venv created when missing, with Python $python_version (uv finds that Python
# or downloads it); a conda_env target uses the existing env. Then the project is installed with its
# extra unless every requirement is met already, so a second run on a ready worker only checks.
# Prints key=value lines: problem=... (nothing was changed), or python=, created=, action=.
# The installer's output goes to logs/setup.log of the checkout.
# params: repo venv conda_env extra python_version
# uses: paths python

export PATH="$HOME/.local/bin:$PATH"  # where `pip install --user` puts uv
export UV_NATIVE_TLS=1  # the system's certificates, as pip uses: also behind a proxy or mirror with its own CA
repo_dir=$(expand_home "$repo")
if [ ! -f "$repo_dir/pyproject.toml" ]; then
  echo "problem=no checkout with a pyproject.toml at $repo: run tpuctl sync first"
  exit 0
fi
cd "$repo_dir"
mkdir -p logs
log=logs/setup.log
: > "$log"

# ensure_uv: uv on PATH, else installed for this user by pip (a user install touches no system package).
ensure_uv() {
  if command -v uv > /dev/null; then return 0; fi
  echo "installing uv with pip --user" >> "$log"
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --user --quiet uv >> "$log" 2>&1 && command -v uv > /dev/null
}

# python_of FOLDER: "major.minor" of the venv's Python, empty when it has none.
python_of() { "$1/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }

created=no
if [ -n "$venv" ]; then
  venv_dir=$(expand_home "$venv")
  if [ -e "$venv_dir" ] && [ ! -x "$venv_dir/bin/python" ]; then
    echo "problem=$venv exists but is not a virtual environment (no bin/python): remove it or set venv to another folder"
    exit 0
  fi
  if [ ! -e "$venv_dir" ]; then
    if ! ensure_uv; then
      echo "problem=uv could not be installed (python3 -m pip install --user uv failed; see $repo_dir/$log)"
      exit 0
    fi
    if ! uv venv --python "$python_version" "$venv_dir" >> "$log" 2>&1; then
      echo "problem=uv could not create $venv with Python $python_version (see $repo_dir/$log)"
      exit 0
    fi
    created=yes
  fi
  have=$(python_of "$venv_dir")
  if [ "$have" != "$python_version" ]; then
    echo "problem=$venv has Python ${have:-unknown}, expected $python_version: remove it or set venv to another folder"
    exit 0
  fi
elif [ -z "$conda_env" ]; then
  echo "problem=the target names no Python environment: set venv (created by setup) or conda_env (an existing env)"
  exit 0
fi
if ! activate_python 2>> "$log"; then
  echo "problem=$(tail -n 1 "$log")"
  exit 0
fi
have=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "$python_version" ]; then
  echo "problem=conda env $conda_env has Python $have, expected $python_version"
  exit 0
fi
echo "python=$(python -c 'import platform; print(platform.python_version())')"
echo "created=$created"

# missing_requirements: one line per requirement of the project with its extra (and of what those
# require in turn, extras included) that the environment does not satisfy; empty when ready.
missing_requirements() {
  python - "$extra" <<'TPUCTL_SETUP_EOF'
import sys, tomllib
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    print("packaging (to check the others)")
    sys.exit(0)
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
optional = project.get("optional-dependencies", {})
missing, seen = [], set()

def check(texts, extras, own):
    for text in texts:
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        if own and req.name == project["name"]:
            for extra in req.extras:
                check(optional.get(extra, []), set(), True)
            continue
        key = (req.name.lower(), tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if not req.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (installed: {version})")
        elif req.extras:
            check(metadata.requires(req.name) or [], set(req.extras), False)

check(project.get("dependencies", []), set(), True)
wanted = sys.argv[1]
if wanted:
    if wanted not in optional:
        print(f"the extra {wanted!r} (pyproject.toml has {', '.join(sorted(optional))})")
    check(optional.get(wanted, []), set(), True)
try:
    metadata.version(project["name"])
except metadata.PackageNotFoundError:
    missing.append(project["name"] + " itself")
print("\n".join(missing))
TPUCTL_SETUP_EOF
}

missing=$(missing_requirements)
if [ -z "$missing" ]; then
  echo "action=ready"
  exit 0
fi
printf 'missing: %s\n' "$missing" >> "$log"
if ! ensure_uv; then
  echo "problem=uv could not be installed (python3 -m pip install --user uv failed; see $repo_dir/$log)"
  exit 0
fi
spec=.
if [ -n "$extra" ]; then spec=".[$extra]"; fi
# packaging: what missing_requirements reads requirements with (the training stack has it anyway).
if ! uv pip install --python "$(command -v python)" -e "$spec" packaging >> "$log" 2>&1; then
  echo "problem=installing the project failed: $(tail -n 3 "$log" | tr '\n' ' ')(all of it in $repo_dir/$log)"
  exit 0
fi
missing=$(missing_requirements)
if [ -n "$missing" ]; then
  echo "problem=still missing after the install: $(printf '%s' "$missing" | tr '\n' ',')"
  exit 0
fi
echo "action=installed"

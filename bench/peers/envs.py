"""The peers' virtual environments, built outside .venv (default: .bench-envs/ at the repository root).

Each environment is built once and reused: a stamp file holds the exact requirements it was built
from, and a changed requirement list rebuilds it from scratch.

- trl: CPython 3.11, because the CPU build of torch (`torch==2.13.0+cpu`) is offered to pip on these
  machines for 3.11 only (a plain `pip install torch` fetches the multi-GB CUDA build). torch is
  installed first, alone, and everything after it is constrained to that torch.
- tunix: CPython 3.12 (google-tunix needs >= 3.11; jax 0.12 CPU), no torch; its transformers is
  only used for the tokenizer.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO / ".bench-envs"

TORCH = "torch==2.13.0"
ENVS: dict[str, dict] = {
    "trl": {"python": "3.11", "first": [TORCH],
            "then": ["trl==1.16.0", "transformers==5.24.0", "accelerate", "datasets", "safetensors"]},
    "tunix": {"python": "3.12", "first": [],
              "then": ["google-tunix==0.1.7", "jax==0.12.0.1", "jaxlib==0.12.0.1", "flax==0.12.12", "safetensors"]},
}


def find_python(version: str) -> str:
    """An interpreter of exactly this minor version (PYTHON3_11 / PYTHON3_12 override the search)."""
    override = os.environ.get("PYTHON" + version.replace(".", "_"))
    pyenv = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")))
    for candidate in [override, f"python{version}", *pyenv, f"/usr/local/bin/python{version}",
                      f"/usr/bin/python{version}", "python3"]:
        if not candidate or not shutil.which(candidate):
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == version:
            return shutil.which(candidate)
    raise SystemExit(f"peers: Python {version} not found; set PYTHON{version.replace('.', '_')}=/path/to/python{version}")


def stamp_text(name: str) -> str:
    spec = ENVS[name]
    return "\n".join([f"python {spec['python']}", *spec["first"], "--", *spec["then"]]) + "\n"


def pip(env: Path, *args: str, log) -> None:
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", *args], check=True,
                   stdout=log, stderr=subprocess.STDOUT)


def ensure_env(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """The environment's python, building the environment first when it is missing or stale."""
    env, spec = root / name, ENVS[name]
    stamp = env / "bench-peers.stamp"
    if stamp.exists() and stamp.read_text() == stamp_text(name):
        return env / "bin" / "python"
    shutil.rmtree(env, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    print(f"peers: building the {name} environment in {env} (about a minute with pip's cache warm)",
          file=sys.stderr, flush=True)
    subprocess.run([find_python(spec["python"]), "-m", "venv", str(env)], check=True)
    with open(root / f"{name}-build.log", "w") as log:
        pip(env, "--upgrade", "pip", log=log)
        constraints = []
        if spec["first"]:
            pip(env, *spec["first"], log=log)
            (env / "constraints.txt").write_text("\n".join(spec["first"]) + "\n")
            constraints = ["-c", str(env / "constraints.txt")]
        pip(env, *constraints, *spec["then"], log=log)
    stamp.write_text(stamp_text(name))
    return env / "bin" / "python"


def main() -> None:
    parser = argparse.ArgumentParser(description="Build (or reuse) the peers' virtual environments.")
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(ENVS)} (default: all)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(ENVS))
    if unknown:
        parser.error(f"names: expected some of {', '.join(ENVS)}, received {', '.join(unknown)}")
    for name in args.names or list(ENVS):
        print(ensure_env(name, args.root))


if __name__ == "__main__":
    main()

"""The project's main job on its embedded default: the SOP's smoke against a simulated TPU VM.

No cloud is needed. A SimTpuVm (real sshd workers, the fake TPU API on the real wire protocol)
stands in for the VM; this repository's committed HEAD is served from a local bare origin; a .env
carries a placeholder W&B key (W&B offline); a tiny Qwen2 model is built locally. Then
`tpuctl smoke` runs the whole SOP: sync -> secrets push -> verify-env (expecting the CPU backend
and the project's pins) -> launch `python -m trainer --preset smoke` with
rollout.backend=sglang_jax on the tiny model and the in-repo GSM8K sample -> tail until exit ->
the SOP's expected result. Last, `tpuctl report` fetches the smoke run's metrics.jsonl from worker 0
and writes its report (HTML and PNGs) to runs/demo-report/ in this checkout, or to --report DIR.

    python -m tpuctl.sim.demo [--workers N] [--conda] [--keep DIR] [--report DIR]

`--conda` runs it as the SOP's VM is set up: the target names a conda env (`mllm-jax`) instead of a
venv, and the workers have the conda stand-in of tpuctl.sim.conda (a `conda` shell function in
~/miniconda3/etc/profile.d/conda.sh whose env is this Python's environment).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tpuctl.sim.vm import SimTpuVm, bare_origin, write_config

REPO_ROOT = Path(__file__).resolve().parents[2]
GSM8K_SAMPLE = "tests/trainer/data"  # relative to the synced checkout on the worker
PLACEHOLDER_WANDB_KEY = "sim" + "0" * 37  # 40 characters, like a real key; W&B runs offline
CONDA_ENV = "mllm-jax"  # the SOP's env name
DEFAULT_REPORT = REPO_ROOT / "runs" / "demo-report"  # outlives the simulated VM's temporary folder


def smoke_command(model_dir: Path, checkpoint_dir: Path | None = None) -> str:
    """The trainer's smoke preset, pointed at the tiny model and the in-repo GSM8K sample, on CPU.
    A pod needs a checkpoint folder every host shares (a gs:// bucket on a real one)."""
    shared = ["--set", f"checkpoint.dir={checkpoint_dir}"] if checkpoint_dir else []
    return shlex.join([
        "WANDB_MODE=offline", "JAX_PLATFORMS=cpu", "python", "-m", "trainer", "--preset", "smoke",
        "--set", f"model_path={model_dir}", "--set", f"data.path={GSM8K_SAMPLE}",
        "--set", "rollout.backend=sglang_jax", "--set", "model.param_dtype=float32", *shared,
    ])


def build_tiny_model(destination: Path) -> Path:
    subprocess.run([sys.executable, "-m", "trainer.testing.make_tiny_model", str(destination)], check=True,
                   capture_output=True)
    return destination


def prepare_project(vm: SimTpuVm, folder: Path, repository: Path, command: str) -> Path:
    """A laptop-side project folder: tpuctl.toml naming the simulated VM (its conda env when it has
    the conda stand-in, else this venv, both set up with the `cpu` extra), and a .env."""
    folder.mkdir(parents=True, exist_ok=True)
    origin = bare_origin(repository, vm.root / "origin.git")
    # The branch checked out here (main in CI, a feature branch in a developer's worktree).
    branch = subprocess.run(["git", "-C", str(origin), "symbolic-ref", "--short", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    python_env = {"conda_env": next(iter(vm.conda_envs))} if vm.conda_envs else {"venv": sys.prefix}
    write_config(folder / "tpuctl.toml", vm.target_table(
        repo_url=str(origin), repo_path="~/repo", branch=branch, env_file="~/.env", expect_backend="cpu",
        setup_extra="cpu", smoke_command=command, **python_env))
    (folder / ".env").write_text(f"WANDB_API_KEY={PLACEHOLDER_WANDB_KEY}\n")
    return folder


def run_tpuctl(folder: Path, *args: str) -> int:
    """The real CLI, in a child process whose working folder is the project (as a user would run it)."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tpuctl", *args], cwd=folder, env=environ).returncode


def run_demo(root: Path, workers: int = 1, repository: Path = REPO_ROOT, conda: bool = False,
             report: Path = DEFAULT_REPORT) -> int:
    """Build the simulated VM under `root`, run `tpuctl smoke` against it, then `tpuctl report` of the
    smoke run into `report` when the smoke passed; returns the first failing exit code, else 0."""
    os.environ["TPUCTL_KNOWN_TPUS"] = str(root / "known_tpus.json")
    envs = {CONDA_ENV: Path(sys.prefix)} if conda else {}
    with SimTpuVm(root / "vm", workers=workers, conda_envs=envs) as vm:
        model = build_tiny_model(root / "tiny-qwen2")
        bucket = root / "bucket" / "smoke" if workers > 1 else None
        folder = prepare_project(vm, root / "project", repository, smoke_command(model, bucket))
        code = run_tpuctl(folder, "smoke")
        if code == 0:
            code = run_tpuctl(folder, "report", "--name", "smoke", "--out", str(report.absolute()))
        return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="workers of the simulated VM (default 1: a v4-8)")
    parser.add_argument("--conda", action="store_true", help=f"activate a conda env ({CONDA_ENV}) as the SOP's VM does")
    parser.add_argument("--keep", type=Path, help="build everything here and keep it (default: a temporary folder)")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT,
                        help="where the smoke run's report goes (default: runs/demo-report in this checkout)")
    args = parser.parse_args()
    if subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout:
        print("note: the simulated VM syncs the last commit; uncommitted changes are not in it", flush=True)
    start = time.perf_counter()
    if args.keep:
        code = run_demo(args.keep, args.workers, conda=args.conda, report=args.report)
    else:
        with tempfile.TemporaryDirectory(prefix="tpuctl-sim-") as tmp:
            code = run_demo(Path(tmp), args.workers, conda=args.conda, report=args.report)
    report = f"; the smoke run's report: {args.report.absolute() / 'report.html'}" if code == 0 else ""
    print(f"demo finished in {time.perf_counter() - start:.1f} s with exit code {code}{report}", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()

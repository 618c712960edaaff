"""Helpers of the tpuctl tests: a project folder whose tpuctl.toml points at real sshd workers, the CLI
run in-process or as its own process, and the files a run leaves on a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from typer.testing import CliRunner

from tests.helpers import wait_for
from tpuctl.cli import app
from tpuctl.config import Target
from tpuctl.ops.targets import resolve_workers
from tpuctl.sim.sshd import SshdWorker
from tpuctl.transport import Session

WANDB_KEY = "wandb-secret-" + "7" * 40  # what must never show up anywhere
HF_TOKEN = "hf_secretvalue_QQQ"
# What `tpuctl --help` must not import: the CLI starts fast (tests/tpuctl/test_cli_startup.py).
HEAVY = ("fabric", "paramiko", "invoke", "google", "jax", "grpc", "matplotlib")
_STARTUP_PROBE = """
import json, sys
from tpuctl.cli import main
sys.argv = ["tpuctl", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
print("MODULES=" + json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@dataclass
class Project:
    folder: Path
    workers: list[SshdWorker]
    origin: Path
    identity: Path

    @property
    def config_file(self) -> Path:
        return self.folder / "tpuctl.toml"

    def target_table(self) -> dict:
        return {
            "hosts": [w.hostport for w in self.workers],
            "host_keys": [w.fingerprint for w in self.workers],
            "identity_file": str(self.identity),
            "repo_url": str(self.origin),
            "repo_path": "~/repo",
            "branch": "main",
            "env_file": "~/.env",
        }

    def write_config(self, **changes) -> None:
        table = {**self.target_table(), **changes}
        self.config_file.write_text(tomlkit.dumps({"targets": {"sim": table}}))

    def remote(self, index: int, path: str) -> Path:
        """A path on worker `index` as this machine sees it (each worker has its own home)."""
        return self.workers[index].home / path.removeprefix("~/")

    def session(self) -> tuple[Session, list]:
        table = self.target_table()
        target = Target(alias="sim", hosts=tuple(table["hosts"]), host_keys=tuple(table["host_keys"]),
                        identity_file=table["identity_file"], repo_url=table["repo_url"], repo_path="~/repo")
        return Session(target), resolve_workers(target)

    def write_env(self, text: str | None = None) -> Path:
        path = self.folder / ".env"
        path.write_text(text if text is not None else
                        f"WANDB_API_KEY={WANDB_KEY}\nHF_TOKEN='{HF_TOKEN}'\nWANDB_PROJECT=gsm8k-grpo\n")
        return path


def make_project(root: Path, workers: list[SshdWorker], origin: Path, client_key: Path, monkeypatch) -> Project:
    """`root/project`, the current folder from now on, with a clean TPUCTL_* environment and a tpuctl.toml."""
    folder = root / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("COLUMNS", "250")  # tables are not shortened to 80 columns in captured output
    for name in [n for n in os.environ if n.startswith("TPUCTL_")]:
        monkeypatch.delenv(name)
    project = Project(folder, workers, origin, client_key)
    project.write_config()
    return project


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def all(self) -> str:
        return self.out + self.err


def run(*args: str) -> Ran:
    """Run the real CLI in-process, capturing stdout and stderr separately."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


def tpuctl_process(project: Project, *args: str) -> subprocess.Popen:
    """The real CLI in its own process, from the project folder, as a user runs it."""
    return subprocess.Popen([sys.executable, "-m", "tpuctl", *args], cwd=project.folder, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})


def logs(project, index: int = 0) -> Path:
    return project.remote(index, "~/repo/logs")


def exit_text(project, name: str = "train", index: int = 0) -> str:
    path = logs(project, index) / f"{name}_latest.exit"
    return wait_for(lambda: path.exists() and path.read_text().strip())


def tail_a_long_run(project, sleep_s: str) -> tuple[threading.Thread, dict[str, Ran]]:
    """Launch a 60-step fake run and follow it with `tail --until-exit` in a thread, whose result lands
    in the dict under "r"; returns once step 10 is in the log, so the tail is under way."""
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "60", "--sleep", sleep_s).code == 0
    log = logs(project) / "train_latest.log"
    wait_for(lambda: log.exists())
    results: dict[str, Ran] = {}
    follower = threading.Thread(target=lambda: results.update(r=run("tail", "--until-exit", "-n", "1000")))
    follower.start()
    wait_for(lambda: "step=10 " in log.read_text())
    return follower, results


def startup_imports(args: list[str]) -> tuple[str, list[str]]:
    """What `tpuctl ARGS` prints, in a fresh interpreter, and the top-level modules it has imported by its exit."""
    out = subprocess.run([sys.executable, "-c", _STARTUP_PROBE, json.dumps(args)], capture_output=True, text=True,
                         check=True).stdout
    return out, json.loads(out.split("MODULES=")[1])


def fail_the_copy_then_drop_the_cleanup(monkeypatch, worker: SshdWorker) -> list[BaseException]:
    """A copy over SFTP fails for real (its temporary file vanishes before the write), then the worker's sshd
    sessions are killed as the cleanup removes that file: paramiko raises SSHException for the dropped
    connection there. Returns the cleanup's errors, so a test can see the drop really happened."""
    import signal

    import paramiko

    original_open, original_remove = paramiko.SFTPClient.open, paramiko.SFTPClient.remove
    cleanup_errors: list[BaseException] = []

    def vanishing_open(self, filename, mode="r", bufsize=-1):
        Path(filename).unlink()  # the worker is this machine: the temporary file goes away before the write
        return original_open(self, filename, mode, bufsize)

    def dropping_remove(self, path):
        for pid in worker.session_pids():
            os.kill(pid, signal.SIGKILL)
        try:
            return original_remove(self, path)
        except BaseException as exc:
            cleanup_errors.append(exc)
            raise

    monkeypatch.setattr(paramiko.SFTPClient, "open", vanishing_open)
    monkeypatch.setattr(paramiko.SFTPClient, "remove", dropping_remove)
    return cleanup_errors

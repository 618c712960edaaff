"""A project folder with a tpuctl.toml pointing at real sshd workers, and a way to run the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomlkit
from typer.testing import CliRunner

from tpuctl.cli import app
from tpuctl.config import Target
from tpuctl.sim.sshd import SshdWorker
from tpuctl.transport import Session
from tpuctl.workers import resolve_workers

WANDB_KEY = "wandb-secret-" + "7" * 40  # what must never show up anywhere
HF_TOKEN = "hf_secretvalue_QQQ"


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


def make_project(tmp_path: Path, workers: list[SshdWorker], origin: Path, client_key: Path, monkeypatch) -> Project:
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("COLUMNS", "250")  # tables are not shortened to 80 columns in captured output
    for name in [n for n in os.environ if n.startswith("TPUCTL_")]:
        monkeypatch.delenv(name)
    project = Project(folder, workers, origin, client_key)
    project.write_config()
    return project


@pytest.fixture
def project1(tmp_path, start_workers, origin, client_key, monkeypatch) -> Project:
    return make_project(tmp_path, start_workers(1), origin, client_key, monkeypatch)


@pytest.fixture
def project3(tmp_path, start_workers, origin, client_key, monkeypatch) -> Project:
    return make_project(tmp_path, start_workers(3), origin, client_key, monkeypatch)


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

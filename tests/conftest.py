"""Fixtures shared by the whole suite: real sshd workers on loopback and a real git origin."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from tpuctl.sim.sshd import SshdWorker, keygen

_ADDRESSES = itertools.count()


def next_address() -> str:
    """A fresh loopback address per worker (127.0.0.2, 127.0.0.3, ...), as a pod's hosts have."""
    n = next(_ADDRESSES)
    return f"127.0.{n // 250}.{n % 250 + 2}"


@pytest.fixture(scope="session")
def client_key(tmp_path_factory) -> Path:
    return keygen(tmp_path_factory.mktemp("client") / "id_ed25519", comment="tpuctl-tests")


@pytest.fixture
def start_workers(tmp_path, client_key):
    """start_workers(n) -> n running sshd workers, stopped at teardown."""
    started: list[SshdWorker] = []

    def start(count: int) -> list[SshdWorker]:
        authorized = client_key.with_suffix(".pub").read_text()
        for _ in range(count):
            root = tmp_path / f"worker{len(started)}"
            started.append(SshdWorker(root, next_address(), authorized).start())
        return started[-count:]

    yield start
    for worker in started:
        worker.stop()


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def origin(tmp_path) -> Path:
    """A bare git repository holding a small project, as the training repo's origin."""
    bare = tmp_path / "origin.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), cwd=tmp_path)
    work = tmp_path / "origin-work"
    git("clone", "--quiet", str(bare), str(work), cwd=tmp_path)
    (work / "README.md").write_text("training repo\n")
    payload = Path(__file__).parent / "tpuctl" / "payload" / "fake_trainer.sh"
    (work / "fake_trainer.sh").write_text(payload.read_text())
    (work / "fake_trainer.sh").chmod(0o755)
    git("add", "-A", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "initial", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return bare


@pytest.fixture(scope="session")
def gcs_emulator():
    """A local GCS emulator (tpuctl.sim.gcs) for the session; its `env` points a process's GCS clients at it."""
    from tpuctl.sim.gcs import GcsEmulator

    with GcsEmulator() as emulator:
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator, request) -> str:
    """A gs:// folder of its own for each test, in a bucket emptied first."""
    gcs_emulator.wipe()
    return f"gs://{gcs_emulator.bucket}/{request.node.name}"

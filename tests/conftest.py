"""Fixtures shared by the whole suite: real sshd workers on loopback and a real git origin."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_origin, next_address
from tpuctl.sim.sshd import SshdWorker, keygen


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


@pytest.fixture
def origin(tmp_path) -> Path:
    """A bare git repository holding a small project (with tests/tpuctl/payload/fake_trainer.sh), as the
    training repo's origin."""
    return make_origin(tmp_path)


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

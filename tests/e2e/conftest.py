"""Fixtures of the end-to-end tests: the README demo's simulated TPU VM (one worker, conda, a two-host pod),
with the real trainer installed on its "VM" side."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("sgl_jax")

from tests.e2e.helpers import SimProject, make_sim_project  # noqa: E402
from tpuctl.sim.demo import REPO_ROOT, build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-qwen2")


@pytest.fixture(scope="session")
def committed_repo(tmp_path_factory) -> Path:
    """This checkout with its uncommitted changes committed, so the VM runs the code under test."""
    copy = tmp_path_factory.mktemp("repo") / "checkout"
    subprocess.run(["git", "clone", "--quiet", "--no-local", str(REPO_ROOT), str(copy)], check=True)
    tracked_changes = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "HEAD", "--binary"], check=True,
                                     capture_output=True).stdout
    if tracked_changes:
        subprocess.run(["git", "-C", str(copy), "apply", "--binary", "-"], input=tracked_changes, check=True)
    untracked = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "--others", "--exclude-standard", "-z"],
                               check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, untracked):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((REPO_ROOT / name).read_bytes())
    subprocess.run(["git", "-C", str(copy), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(copy), "-c", "user.name=t", "-c", "user.email=t@example.com", "commit",
                    "--quiet", "--allow-empty", "-m", "under test"], check=True)
    return copy


@pytest.fixture
def sim_vm(tmp_path, committed_repo, tiny_model, monkeypatch):
    """A one-worker simulated TPU VM (a v4-8) and a project folder targeting it."""
    monkeypatch.setenv("TPUCTL_KNOWN_TPUS", str(tmp_path / "known_tpus.json"))
    vm, folder = make_sim_project(tmp_path, 1, committed_repo, tiny_model)
    yield SimProject(vm, folder, tiny_model)
    vm.__exit__()


@pytest.fixture
def sim_vm_conda(tmp_path, committed_repo, tiny_model, monkeypatch):
    """The SOP's set-up: a one-worker simulated VM whose target activates the conda env mllm-jax."""
    monkeypatch.setenv("TPUCTL_KNOWN_TPUS", str(tmp_path / "known_tpus.json"))
    vm, folder = make_sim_project(tmp_path, 1, committed_repo, tiny_model, conda=True)
    yield SimProject(vm, folder, tiny_model)
    vm.__exit__()


@pytest.fixture(scope="module")
def sim_pod(tmp_path_factory, committed_repo, tiny_model):
    """A two-worker simulated pod slice, synced once for the module's tests."""
    root = tmp_path_factory.mktemp("pod")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TPUCTL_KNOWN_TPUS", str(root / "known_tpus.json"))
        vm, folder = make_sim_project(root, 2, committed_repo, tiny_model)
        project = SimProject(vm, folder, tiny_model)
        try:
            synced = project.tpuctl("sync")
            assert synced.code == 0, synced.err
            yield project
        finally:
            vm.__exit__()


@pytest.fixture
def sim_spot(tmp_path, committed_repo, tiny_model, monkeypatch):
    """A one-worker simulated spot TPU VM that the fake API can preempt and create again, and its project."""
    monkeypatch.setenv("TPUCTL_KNOWN_TPUS", str(tmp_path / "known_tpus.json"))
    vm, folder = make_sim_project(tmp_path, 1, committed_repo, tiny_model, spot=True)
    yield SimProject(vm, folder, tiny_model)
    vm.__exit__()

"""Fixtures of the tpuctl tests: projects whose workers are real sshd servers, fresh or synced."""

from __future__ import annotations

import pytest

from tests.helpers import git
from tests.tpuctl.helpers import Project, make_project, run


@pytest.fixture
def project1(tmp_path, start_workers, origin, client_key, monkeypatch) -> Project:
    return make_project(tmp_path, start_workers(1), origin, client_key, monkeypatch)


@pytest.fixture
def project3(tmp_path, start_workers, origin, client_key, monkeypatch) -> Project:
    return make_project(tmp_path, start_workers(3), origin, client_key, monkeypatch)


@pytest.fixture
def laptop(project1, origin) -> Project:
    """The project folder (holding tpuctl.toml, untracked) as a clone of origin, as a training repository is."""
    folder = project1.folder
    git("init", "--quiet", "--initial-branch=main", cwd=folder)
    git("remote", "add", "origin", str(origin), cwd=folder)
    git("fetch", "--quiet", "origin", cwd=folder)
    git("checkout", "--quiet", "-f", "-B", "main", "origin/main", cwd=folder)
    return project1


@pytest.fixture
def synced1(project1) -> Project:
    assert run("sync").code == 0
    return project1


@pytest.fixture
def synced3(project3) -> Project:
    assert run("sync").code == 0
    return project3

"""Fixtures of the tpuctl tests: projects whose workers are real sshd servers, fresh or synced."""

from __future__ import annotations

import pytest

from tests.tpuctl.helpers import Project, make_project, run


@pytest.fixture
def project1(tmp_path, start_workers, origin, client_key, monkeypatch) -> Project:
    return make_project(tmp_path, start_workers(1), origin, client_key, monkeypatch)


@pytest.fixture
def project3(tmp_path, start_workers, origin, client_key, monkeypatch) -> Project:
    return make_project(tmp_path, start_workers(3), origin, client_key, monkeypatch)


@pytest.fixture
def synced1(project1) -> Project:
    assert run("sync").code == 0
    return project1


@pytest.fixture
def synced3(project3) -> Project:
    assert run("sync").code == 0
    return project3

"""`tpuctl secrets push`: validated locally, copied atomically with mode 600, values never shown."""

from __future__ import annotations

import stat
import subprocess

import pytest

from tests.tpuctl.conftest import HF_TOKEN, WANDB_KEY, run


def test_push_copies_with_mode_600_and_shows_key_names_only(project3):
    env = project3.write_env()
    result = run("secrets", "push")
    assert result.code == 0, result.all
    assert "WANDB_API_KEY, HF_TOKEN, WANDB_PROJECT" in result.out
    assert WANDB_KEY not in result.all and HF_TOKEN not in result.all
    for i in range(3):
        remote = project3.remote(i, "~/.env")
        assert remote.read_bytes() == env.read_bytes()
        assert stat.S_IMODE(remote.stat().st_mode) == 0o600
        assert not list(remote.parent.glob(".env.tpuctl-*"))  # no temporary file left behind


def test_a_different_previous_env_is_kept(project1):
    remote = project1.remote(0, "~/.env")
    remote.write_text("OLD=1\n")
    project1.write_env()
    result = run("secrets", "push")
    assert result.code == 0, result.all
    assert (remote.parent / ".env.previous").read_text() == "OLD=1\n"
    assert "previous file kept" in result.out


@pytest.mark.parametrize("text, expected", [
    ("WANDB_API_KEY=short\n", "WANDB_API_KEY in .env has 5 characters; expected 40 or more"),
    ("GOOD=1\nthis line is broken\n", "line 2 is not KEY=VALUE"),
    ("BAD-KEY=1\n", "key 'BAD-KEY' is not a shell variable name"),
    ("TOKEN=two words\n", "the value of TOKEN has spaces or shell characters"),
    ("# only a comment\n", "defines no variables"),
])
def test_bad_env_files_are_refused_before_anything_is_copied(project1, text, expected):
    project1.write_env(text)
    result = run("secrets", "push")
    assert result.code == 2
    assert expected in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "short" not in result.err and "two words" not in result.err  # values never echoed
    assert not project1.remote(0, "~/.env").exists()


def test_env_tracked_by_git_is_refused(project1):
    project1.write_env()
    subprocess.run(["git", "init", "--quiet"], cwd=project1.folder, check=True)
    subprocess.run(["git", "add", "-f", ".env"], cwd=project1.folder, check=True)
    result = run("secrets", "push")
    assert result.code == 2
    assert "tracked by git" in result.err and "git rm --cached .env" in result.err
    assert not project1.remote(0, "~/.env").exists()


def test_dry_run_names_the_steps_without_values(project1):
    project1.write_env()
    result = run("secrets", "push", "--dry-run")
    assert result.code == 0
    assert "sftp put .env" in result.out and "mode 600" in result.out
    assert WANDB_KEY not in result.all
    assert not project1.remote(0, "~/.env").exists()

"""`tpuctl secrets push`: validated locally, copied atomically with mode 600, values never shown."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest
from dotenv import dotenv_values

from tests.helpers import wait_for
from tests.tpuctl.helpers import HF_TOKEN, WANDB_KEY, fail_the_copy_then_drop_the_cleanup, run


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
    ("DATA=${HOME}/data\n", "the value of DATA uses ${...}, which python-dotenv expands differently on each machine"),
    ("# only a comment\n", "defines no variables"),
])
def test_bad_env_files_are_refused_before_anything_is_copied(project1, text, expected):
    project1.write_env(text)
    result = run("secrets", "push")
    assert result.code == 2
    assert expected in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "short" not in result.err and "/data" not in result.err  # values never echoed
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
    assert "sftp write .env" in result.out and "mode 600" in result.out
    assert WANDB_KEY not in result.all
    assert not project1.remote(0, "~/.env").exists()


ISSUE_VALUES = 'DB_PASS="pa$word`id -u`"\nPLAIN=abc$HOME\nTILDE=~/data\n'
MORE_VALUES = ("SPACES=two words\nQUOTED='it\\'s'\nESCAPED=\"a\\nb\\\"c\"\nMULTI='line one\nline two'\n"
               "EMPTY=\nHASH=a#b\nCOMMENTED=x # a comment\nUNICODE=é中\nEQUALS=a=b=c\nexport EXPORTED=yes\n")


def test_the_run_sees_each_env_value_exactly_as_python_dotenv_reads_it(project1):
    env = project1.write_env(ISSUE_VALUES + MORE_VALUES)
    expected = dotenv_values(env)
    assert expected["DB_PASS"] == "pa$word`id -u`" and expected["PLAIN"] == "abc$HOME"  # python-dotenv's reading
    assert run("sync").code == 0 and run("secrets", "push").code == 0
    dump = "import json, os, sys; json.dump({k: os.environ.get(k) for k in sys.argv[1:]}, open('seen.json', 'w'))"
    assert run("launch", "--", "python3", "-c", dump, *expected).code == 0
    seen = project1.remote(0, "~/repo/seen.json")
    wait_for(lambda: seen.exists() and seen.stat().st_size)
    assert json.loads(seen.read_text()) == dict(expected)


def test_temporary_env_files_are_created_mode_600(project1, monkeypatch):
    """The secret never sits in a file others can read, not even between creating and chmod."""
    project1.write_env()
    seen = []
    original = paramiko.SFTPClient.open

    def recording_open(self, filename, mode="r", bufsize=-1):
        handle = original(self, filename, mode, bufsize)
        seen.append(stat.S_IMODE(Path(filename).stat().st_mode))  # the worker is this machine: look at the file
        return handle

    monkeypatch.setattr(paramiko.SFTPClient, "open", recording_open)
    assert run("secrets", "push").code == 0
    assert seen and set(seen) == {0o600}
    assert stat.S_IMODE(project1.remote(0, "~/.env.values").stat().st_mode) == 0o600


def test_a_connection_dropped_during_cleanup_does_not_hide_the_copy_error(project1, monkeypatch):
    """paramiko's SSHException from the cleanup must not replace the error that says why the copy failed."""
    project1.write_env()
    cleanup_errors = fail_the_copy_then_drop_the_cleanup(monkeypatch, project1.workers[0])
    result = run("secrets", "push")
    assert result.code == 1, result.all
    # The drop happened: paramiko raised there (SSHException as a rule; OSError if the channel closed first).
    assert cleanup_errors and isinstance(cleanup_errors[0], (paramiko.SSHException, OSError)), cleanup_errors
    assert "FileNotFoundError" in result.err and "SSHException" not in result.all, result.all
    assert len(result.err.strip().splitlines()) == 1, result.err

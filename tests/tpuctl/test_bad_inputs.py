"""Bad input: one line naming the value and what was expected, exit 2, nothing changed on any worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tpuctl.helpers import run

CASES = [
    (("sync", "--worker", "abc"), "bad worker selection 'abc'"),
    (("sync", "--worker", "5"), "worker 5 is out of range: the target has 3 worker(s), 0-2"),
    (("sync", "--worker", "3-1"), "bad worker range '3-1'"),
    (("sync", "--worker", "0,,1"), "bad worker selection '0,,1'"),
    (("--target", "nope", "sync"), "unknown target 'nope'"),
    (("--hosts", "127.0.0.1:99999", "sync"), "bad host '127.0.0.1:99999'"),
    (("--hosts", "bad_host!", "sync"), "bad host 'bad_host!'"),
    (("--set", "nosuchkey=1", "sync"), "unknown setting 'nosuchkey'"),
    (("--set", "coordinator_port=abc", "sync"), "coordinator_port in flag: expected an integer, received 'abc'"),
    (("--set", "user=Bad User", "sync"), "user: expected a POSIX user name such as 'root', received 'Bad User'"),
    (("--branch", "bad..name", "sync"), "branch: expected a git branch name, received 'bad..name'"),
    (("--branch", "no-such-branch", "sync"), "branch 'no-such-branch' does not exist"),
    (("--set", "host_keys=SHA256:short", "sync"), "host_keys: expected OpenSSH fingerprints"),
    (("--set", "repo_path=relative/path", "sync"), "repo_path: expected an absolute path or one starting with ~/"),
    (("--zone", "us-central", "sync"), "zone: expected a zone such as 'us-central2-b', received 'us-central'"),
    (("--set", "venv=/v", "--set", "conda_env=x", "sync"), "venv: expected either conda_env or venv, not both"),
    (("--set", "expect_versions=jax", "verify-env"), "expected name=value pairs"),
    (("--set", "nokey", "sync"), "bad --set 'nokey': expected KEY=VALUE"),
    (("--config", "missing.toml", "sync"), "config file 'missing.toml' does not exist"),
    (("verify-env", "--expect-backend", "tpux"), "bad --expect-backend 'tpux'"),
    (("secrets", "push", "--env-file", "missing.env"), "env file 'missing.env' not found"),
    (("launch", "--name", "bad_name", "--", "true"), "bad run name 'bad_name'"),
    (("launch", "--env", "NOEQUALS", "--", "true"), "bad --env 'NOEQUALS'"),
    (("launch",), "no command to launch"),
    (("status", "--name", "../x"), "bad run name '../x'"),
    (("--set", "setup_extra=tpu]; rm -rf ~", "setup"), "setup_extra: expected the name of an extra of pyproject.toml"),
    (("--set", "python_version=3.12; true", "setup"), "python_version: expected a Python version as major.minor"),
    (("--set", "python_version=3", "setup"), "received '3'"),
    (("doctor", "--grace", "-1"), "bad --grace -1: expected seconds from 0 to 3600"),
    (("doctor", "--lock-file", "libtpu_lockfile"), "bad device or lock file 'libtpu_lockfile'"),
    (("babysit",), "no command to babysit"),
    (("babysit", "--name", "a/b", "--", "true"), "bad run name 'a/b'"),
    (("babysit", "--max-preemptions", "-1", "--", "true"), "bad --max-preemptions -1: expected a count from 0 to 10000"),
    (("babysit", "--poll", "1e-6", "--", "true"), "bad --poll 1e-06: expected seconds from 0.1 to 3600"),
    (("babysit", "--", "trainer", "--preset", "smoke"), "checkpoint.dir: expected a gs:// bucket that outlives the VM"),
    (("babysit", "--", "true"), "name: not set; expected the TPU VM to babysit"),
]


def snapshot(project) -> list[tuple[str, int, int]]:
    files = []
    for worker in project.workers:
        for path in sorted(worker.home.rglob("*")):
            stat = path.lstat()
            files.append((str(path), stat.st_size, stat.st_mtime_ns))
    return files


@pytest.fixture
def synced(project3):
    assert run("sync").code == 0
    return project3


@pytest.mark.parametrize("args, expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_refused_cleanly(synced, args, expected):
    before = snapshot(synced)
    result = run(*args)
    assert result.code == 2, result.all
    assert expected in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert result.err.startswith("error: ")
    assert snapshot(synced) == before


def test_unknown_key_in_the_project_file(synced):
    text = synced.config_file.read_text().replace("branch", "brnach")
    Path("tpuctl.toml").write_text(text)
    result = run("sync")
    assert result.code == 2
    assert "unknown setting 'brnach' in tpuctl.toml [targets.sim]" in result.err


ONE_WORKER_CASES = [
    (("sync", "--worker", "0-99999999999"), "bad worker selection '0-99999999999'"),
    (("sync", "--worker", "0-999999999"), "worker 1 is out of range: the target has 1 worker(s), 0-0"),
    (("sync", "--worker", "\uff11"), "bad worker selection '\uff11'"),
    (("stop", "--grace", "-1"), "bad --grace -1: expected seconds from 0 to 86400"),
    (("tail", "-n", "-5"), "bad --lines -5: expected 0 or more lines"),
    (("--set", "identity_file=/nonexistent/id_ed25519", "status"), "identity_file '/nonexistent/id_ed25519' not found"),
    (("--set", "repo_url=--upload-pack=touch x", "sync"), "repo_url: expected a git URL"),
    (("--set", "repo_url=ext::sh -c touch% x", "sync"), "repo_url: expected a git URL"),
    (("--set", "conda_env=x$(touch y)", "launch", "--", "true"), "conda_env: expected a conda env name"),
    (("--set", "venv=relative", "launch", "--", "true"), "venv: expected an absolute path or one starting with ~/"),
    (("--set", "env_file=~/a\nb", "secrets", "push"), "env_file: expected an absolute path"),
    (("--set", "ssh_timeout=0", "status"), "ssh_timeout: expected seconds from 1 to 3600"),
]


@pytest.mark.parametrize("args, expected", ONE_WORKER_CASES, ids=[" ".join(a) for a, _ in ONE_WORKER_CASES])
def test_bad_input_on_one_worker_is_refused_cleanly(project1, args, expected):
    project1.write_env()
    assert run("sync").code == 0
    before = snapshot(project1)
    result = run(*args)
    assert result.code == 2, result.all
    assert expected in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert snapshot(project1) == before


def test_a_project_file_that_is_not_utf8_is_one_line(project1):
    Path("tpuctl.toml").write_bytes(project1.config_file.read_text().encode() + b"# caf\xe9\n")
    result = run("config")
    assert result.code == 2
    assert "tpuctl.toml: expected UTF-8 text, found byte 0xe9 at offset" in result.err
    assert len(result.err.strip().splitlines()) == 1


CREDENTIAL_URLS = [
    "https://x-access-token:ghp_SECRET@github.com/o/r.git",
    "http://me:ghp_SECRET@git.example.com:8080/o/r",
    "ssh://git:ghp_SECRET@github.com/o/r.git",
    "https://x-access-token:ghp_SECRET@github.com/o/r\tx",  # also fails the URL pattern: still redacted
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_a_password_in_repo_url_is_refused_without_echoing_it(project1, url):
    project1.write_env()
    assert run("sync").code == 0
    before = snapshot(project1)
    result = run("--set", f"repo_url={url}", "sync", "--dry-run")
    assert result.code == 2, result.all
    assert "repo_url: expected a URL without credentials; put the token in GIT_TOKEN in .env" in result.err
    assert "***@" in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "ghp_SECRET" not in result.all
    assert snapshot(project1) == before


def test_a_user_name_alone_in_repo_url_is_accepted(project1):
    project1.write_config(repo_path="", repo_url="https://x-access-token@github.com/acme/grpo-tpu.git")
    result = run("config", "--json")
    assert result.code == 0, result.all
    assert json.loads(result.out)["remote_repo"] == "~/grpo-tpu"

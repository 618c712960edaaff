"""`tpuctl sync` from private repositories: a local git server that demands credentials, real sshd workers.

Over HTTP the server is `git http-backend` behind basic auth (tpuctl.sim.git_server); over SSH it is
a real sshd that lets in only the keys it was given. Plain http is enough here: git hands a helper's
credentials to any http(s) remote, so TLS would add nothing to what these tests check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import paramiko
import pytest

from tests.helpers import git, next_address, wait_for
from tests.tpuctl.helpers import WANDB_KEY, fail_the_copy_then_drop_the_cleanup, run
from tpuctl.sim.git_server import HttpGitServer, SshGitServer
from tpuctl.sim.sshd import keygen

TOKEN = "ghp_PrivateRepoToken0123456789abcdefXYZ"
THREE_WAYS = ("forward_agent = true (--forward-agent)", 'deploy_key = "~/.ssh/KEY"', "GIT_TOKEN in the .env")


@pytest.fixture
def http_git(tmp_path, origin):
    server = HttpGitServer(origin.parent, "x-access-token", TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def ssh_git(tmp_path, origin):
    servers: list[SshGitServer] = []

    def start(*public_keys: Path) -> SshGitServer:
        keys = "".join(key.read_text() for key in public_keys)
        servers.append(SshGitServer(tmp_path / f"git-host{len(servers)}", next_address(), keys).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _env_with_token(project, token: str = TOKEN, extra: str = "") -> None:
    project.write_env(f"WANDB_API_KEY={WANDB_KEY}\nGIT_TOKEN={token}\n{extra}")
    assert run("secrets", "push").code == 0


class ArgvWatch:
    """Every process's argv, read from /proc over and over while a command runs."""

    def __init__(self, needle: str):
        self.needle, self.seen, self.scans = needle.encode(), [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def _scan(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                try:
                    argv = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
                except OSError:
                    continue
                if self.needle in argv:
                    self.seen.append(argv)
            self.scans += 1

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def _files_holding(root: Path, needle: str, skip: tuple[Path, ...] = ()) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and not path.is_symlink() and path not in skip
            and needle.encode() in path.read_bytes()]


def test_https_without_a_token_fails_in_one_line_naming_the_three_ways(project1, http_git, origin):
    result = run("--set", f"repo_url={http_git.url(origin)}", "sync")
    assert result.code == 2, result.all
    assert len(result.err.strip().splitlines()) == 1
    assert "without credentials" in result.err and all(way in result.err for way in THREE_WAYS)
    assert not project1.remote(0, "~/repo").exists()


def test_https_token_from_the_env_file_is_used_and_left_nowhere(project1, http_git, origin):
    url = http_git.url(origin)
    project1.write_config(repo_url=url)
    (project1.workers[0].home / ".gitconfig").write_text("[credential]\n\thelper = store\n")  # would save the token
    _env_with_token(project1)
    with ArgvWatch(TOKEN) as watch:
        result = run("sync")
    assert result.code == 0, result.all
    assert watch.scans > 0 and watch.seen == []
    repo = project1.remote(0, "~/repo")
    assert git("rev-parse", "HEAD", cwd=repo) == git("rev-parse", "HEAD", cwd=origin)
    assert git("remote", "get-url", "origin", cwd=repo) == url
    home = project1.workers[0].home
    assert _files_holding(home, TOKEN, skip=(home / ".env", home / ".env.values")) == []
    assert not (home / ".git-credentials").exists()
    assert TOKEN not in result.all and TOKEN not in git("reflog", "--all", cwd=repo)
    used = [auth for line, auth in http_git.requests if auth]
    assert used and all(TOKEN not in line for line, _ in http_git.requests)


def test_a_wrong_token_is_a_credentials_error_and_changes_nothing(project1, http_git, origin):
    project1.write_config(repo_url=http_git.url(origin))
    _env_with_token(project1, token="ghp_revoked")
    result = run("sync")
    assert result.code == 2 and "without credentials" in result.err, result.all
    assert "ghp_revoked" not in result.all
    assert not project1.remote(0, "~/repo").exists()


def test_the_token_goes_to_the_repositorys_host_only(project1, http_git, origin, tmp_path):
    """A second server (another port: another host for git's credential protocol) never sees the token."""
    other = HttpGitServer(origin.parent, "x-access-token", TOKEN).start()
    try:
        project1.write_config(repo_url=other.url(origin))
        _env_with_token(project1)
        (project1.workers[0].home / ".gitconfig").write_text(
            f'[url "{other.url(origin)}"]\n\tinsteadOf = {http_git.url(origin)}\n')
        project1.write_config(repo_url=http_git.url(origin))
        result = run("sync")
    finally:
        other.stop()
    assert result.code == 2, result.all
    assert other.requests and not any(auth for _, auth in other.requests)


@pytest.mark.parametrize("token", ["tok\nen", "x\rprotocol=https"])
def test_a_token_with_a_line_break_is_never_handed_to_git(project1, http_git, origin, token):
    project1.write_config(repo_url=http_git.url(origin))
    _env_with_token(project1, token=f'"{token}"')  # quoted: python-dotenv keeps the break in the value
    result = run("sync")
    assert result.code == 2 and "without credentials" in result.err, result.all
    assert not any(auth for _, auth in http_git.requests)


def test_ssh_git_host_without_credentials_or_with_an_unpinned_key(project1, ssh_git, origin, client_key, tmp_path):
    server = ssh_git(client_key.with_suffix(".pub"))
    project1.write_config(repo_url=server.url(origin))
    unpinned = run("sync")
    assert unpinned.code == 2, unpinned.all
    assert "git host's SSH key is not pinned" in unpinned.err and "git_host_keys" in unpinned.err
    impostor = client_key.with_suffix(".pub").read_text().split()[:2]  # another key under the host's name
    project1.write_config(repo_url=server.url(origin),
                          git_host_keys=[server.known_hosts_line.split()[0] + " " + " ".join(impostor)])
    changed = run("sync")
    assert changed.code == 2 and "not the pinned one" in changed.err, changed.all
    project1.write_config(repo_url=server.url(origin), git_host_keys=[server.known_hosts_line])
    missing = run("sync")
    assert missing.code == 2, missing.all
    assert "without credentials" in missing.err and all(way in missing.err for way in THREE_WAYS)
    assert len(missing.err.strip().splitlines()) == 1
    assert not project1.remote(0, "~/repo").exists()


def test_a_deploy_key_is_copied_like_the_env_and_used_for_this_repository_only(project1, ssh_git, origin, tmp_path):
    deploy = keygen(tmp_path / "grpo_deploy", comment="deploy")
    server = ssh_git(deploy.with_suffix(".pub"))
    project1.write_config(repo_url=server.url(origin), deploy_key=str(deploy), git_host_keys=[server.known_hosts_line])
    for _ in range(2):  # the second sync copies the same key again, atomically
        result = run("sync")
        assert result.code == 0, result.all
    repo = project1.remote(0, "~/repo")
    assert git("rev-parse", "HEAD", cwd=repo) == git("rev-parse", "HEAD", cwd=origin)
    (copied,) = (project1.workers[0].home / ".ssh").glob("tpuctl_deploy_*")
    assert copied.read_bytes() == deploy.read_bytes() and copied.stat().st_mode & 0o777 == 0o600
    assert not list(copied.parent.glob("*.tpuctl-*"))  # no temporary file left
    assert deploy.read_text().splitlines()[1] not in result.all
    assert "sshCommand" not in (repo / ".git" / "config").read_text()


def test_a_connection_dropped_during_the_deploy_keys_cleanup_does_not_hide_the_copy_error(
        project1, ssh_git, origin, tmp_path, monkeypatch):
    deploy = keygen(tmp_path / "grpo_deploy", comment="deploy")
    server = ssh_git(deploy.with_suffix(".pub"))
    project1.write_config(repo_url=server.url(origin), deploy_key=str(deploy), git_host_keys=[server.known_hosts_line])
    cleanup_errors = fail_the_copy_then_drop_the_cleanup(monkeypatch, project1.workers[0])
    result = run("sync")
    assert result.code == 1, result.all
    # The drop happened: paramiko raised there (SSHException as a rule; OSError if the channel closed first).
    assert cleanup_errors and isinstance(cleanup_errors[0], (paramiko.SSHException, OSError)), cleanup_errors
    assert "FileNotFoundError" in result.err and "SSHException" not in result.all, result.all
    assert not project1.remote(0, "~/repo").exists()


def test_a_deploy_key_with_a_passphrase_is_refused_before_any_worker_changes(project1, ssh_git, origin, tmp_path):
    locked = tmp_path / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)], check=True)
    server = ssh_git(locked.with_suffix(".pub"))
    project1.write_config(repo_url=server.url(origin), deploy_key=str(locked), git_host_keys=[server.known_hosts_line])
    result = run("sync")
    assert result.code == 2 and "deploy_key: expected a private key without a passphrase" in result.err, result.all
    assert not (project1.workers[0].home / ".ssh").exists()


@pytest.fixture
def ssh_agent(tmp_path, monkeypatch):
    """A real ssh-agent of this test, holding one key, as SSH_AUTH_SOCK (stopped by its pid at teardown)."""
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    key = keygen(tmp_path / "agent_key", comment="in-the-agent")
    try:
        wait_for(socket_path.exists, timeout=10)
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(socket_path)},
                       check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        yield key
    finally:
        agent.kill()
        agent.wait(timeout=10)


def test_agent_forwarding_is_opt_in_and_only_for_syncs_git(project1, ssh_git, origin, ssh_agent):
    server = ssh_git(ssh_agent.with_suffix(".pub"))
    project1.write_config(repo_url=server.url(origin), git_host_keys=[server.known_hosts_line])
    not_asked = run("sync")
    assert not_asked.code == 2 and "without credentials" in not_asked.err, not_asked.all
    forwarded = run("sync", "--forward-agent")
    assert forwarded.code == 0, forwarded.all
    assert git("rev-parse", "HEAD", cwd=project1.remote(0, "~/repo")) == git("rev-parse", "HEAD", cwd=origin)
    project1.write_config(repo_url=server.url(origin), git_host_keys=[server.known_hosts_line], forward_agent=True)
    assert run("sync").code == 0
    launched = run("launch", "--name", "agent", "--", "bash", "-c", 'echo "agent=${SSH_AUTH_SOCK:-none}"')
    assert launched.code == 0, launched.all
    assert run("tail", "--name", "agent", "--until-exit").code == 0
    log = next((project1.remote(0, "~/repo") / "logs").glob("agent_*.log")).read_text()
    assert "agent=none" in log


def test_forward_agent_without_an_agent_here_is_bad_input(project1, ssh_git, origin, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    result = run("sync", "--forward-agent")
    assert result.code == 2 and "SSH_AUTH_SOCK" in result.err, result.all
    assert len(result.err.strip().splitlines()) == 1


def test_a_private_submodule_comes_along_with_the_same_token(project1, http_git, origin, tmp_path):
    sub = tmp_path / "sub.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(sub), cwd=tmp_path)
    sub_work = tmp_path / "sub-work"
    git("clone", "--quiet", str(sub), str(sub_work), cwd=tmp_path)
    (sub_work / "reward.py").write_text("REWARD = 1\n")
    git("add", "-A", cwd=sub_work)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "sub", cwd=sub_work)
    git("push", "--quiet", "origin", "main", cwd=sub_work)
    work = tmp_path / "origin-work"
    git("-c", "protocol.file.allow=always", "submodule", "add", "--quiet", "../sub.git", "libs/sub", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "add sub", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    project1.write_config(repo_url=http_git.url(origin))
    _env_with_token(project1)
    result = run("sync")
    assert result.code == 0, result.all
    assert (project1.remote(0, "~/repo") / "libs" / "sub" / "reward.py").read_text() == "REWARD = 1\n"
    assert any("/sub.git/" in line for line, _ in http_git.requests)


@pytest.mark.skipif(shutil.which("git-lfs") is not None, reason="checks a worker WITHOUT git-lfs; this machine has it")
def test_an_lfs_repository_on_a_worker_without_git_lfs_is_one_clear_error(project1, origin):
    assert run("sync").code == 0
    work = origin.parent / "origin-work"
    (work / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    git("add", ".gitattributes", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "lfs", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    before = git("rev-parse", "HEAD", cwd=project1.remote(0, "~/repo"))
    result = run("sync")
    assert result.code == 2, result.all
    assert "git-lfs is not installed on the worker" in result.err and len(result.err.strip().splitlines()) == 1
    assert git("rev-parse", "HEAD", cwd=project1.remote(0, "~/repo")) == before


@pytest.mark.parametrize("line, shown", [
    ("git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n* ssh-rsa AAAA", "\\n"),
    ("-oProxyCommand=touch ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", "-oProxy"),
    ("git.example.com ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", "ssh-rsa"),
    ("* ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", "* ssh"),
])
def test_a_bad_git_host_key_line_is_refused_before_any_worker_changes(project1, line, shown):
    """A line break would add a second (wildcard) host line; a key of another type than it says is no pin."""
    project1.write_config(git_host_keys=[line])
    result = run("sync")
    assert result.code == 2 and "git_host_keys: expected known_hosts lines" in result.err, result.all
    assert shown in result.err and len(result.err.strip().splitlines()) == 1
    assert not project1.remote(0, "~/repo").exists()


def test_dry_run_shows_the_deploy_keys_copy_but_never_the_key(project1, tmp_path):
    deploy = keygen(tmp_path / "grpo_deploy", comment="deploy")
    project1.write_config(deploy_key=str(deploy))
    result = run("sync", "--dry-run")
    assert result.code == 0, result.all
    assert f"sftp write {deploy} -> <mktemp: ~/.ssh/tpuctl_deploy_" in result.out
    assert deploy.read_text().splitlines()[1] not in result.out
    assert not (project1.workers[0].home / ".ssh").exists()


def test_a_pod_without_credentials_is_told_once_not_per_worker(project3, http_git, origin):
    result = run("--set", f"repo_url={http_git.url(origin)}", "sync")
    assert result.code == 2, result.all
    assert "workers 0, 1, 2: cannot read" in result.err and result.err.count("without credentials") == 1
    assert len(result.err.strip().splitlines()) == 1

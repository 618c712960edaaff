"""`tpuctl sync` against real sshd workers and a real git origin."""

from __future__ import annotations

import subprocess

from tests.helpers import git
from tests.tpuctl.helpers import run


def _commit(project, name: str, text: str) -> str:
    work = project.origin.parent / "origin-work"
    (work / name).write_text(text)
    git("add", "-A", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", name, cwd=work)
    git("push", "--quiet", "origin", "HEAD", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def test_sync_clones_then_follows_origin_on_every_worker(project3):
    first = run("sync")
    assert first.code == 0, first.all
    head = git("rev-parse", "HEAD", cwd=project3.origin)
    assert first.out.count(head[:7]) == 4  # three workers and the summary line
    for i in range(3):
        assert git("rev-parse", "HEAD", cwd=project3.remote(i, "~/repo")) == head
    new_head = _commit(project3, "new.txt", "v2\n")
    second = run("sync", "--worker", "1-2")
    assert second.code == 0, second.all
    assert git("rev-parse", "HEAD", cwd=project3.remote(1, "~/repo")) == new_head
    assert git("rev-parse", "HEAD", cwd=project3.remote(0, "~/repo")) == head  # not selected


def test_sync_stashes_local_edits_and_keeps_logs_and_env(project1):
    assert run("sync").code == 0
    repo = project1.remote(0, "~/repo")
    (repo / "README.md").write_text("edited on the VM\n")
    (repo / "scratch.py").write_text("print('experiment')\n")
    (repo / "logs").mkdir()
    (repo / "logs" / "old_run.log").write_text("keep me\n")
    project1.write_config(env_file="~/repo/.env")
    (repo / ".env").write_text("A=1\n")
    result = run("sync")
    assert result.code == 0, result.all
    assert "stashed" in result.out
    assert (repo / "README.md").read_text() == "training repo\n"
    assert not (repo / "scratch.py").exists()
    assert (repo / "logs" / "old_run.log").read_text() == "keep me\n"
    assert (repo / ".env").read_text() == "A=1\n"
    stash = git("stash", "show", "--include-untracked", "--name-only", "stash@{0}", cwd=repo).split()
    assert sorted(stash) == ["README.md", "scratch.py"]


def test_missing_branch_changes_nothing(project3):
    result = run("--branch", "no-such-branch", "sync")
    assert result.code == 2
    assert "no-such-branch" in result.err and "does not exist" in result.err
    assert len(result.err.strip().splitlines()) == 1
    for i in range(3):
        assert not project3.remote(i, "~/repo").exists()


def test_workers_on_different_commits_fail(project3, tmp_path):
    """Worker 2 fetches through a mirror that lags behind: sync must notice the workers differ."""
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(project3.origin), str(mirror)], check=True)
    _commit(project3, "ahead.txt", "only on origin\n")
    (project3.workers[2].home / ".gitconfig").write_text(f'[url "{mirror}"]\n\tinsteadOf = {project3.origin}\n')
    result = run("sync")
    assert result.code == 1
    assert "workers differ" in result.out


def test_dry_run_prints_commands_and_touches_nothing(project3):
    result = run("sync", "--dry-run")
    assert result.code == 0
    for i, worker in enumerate(project3.workers):
        assert f"# worker {i}: ssh -p {worker.port} root@{worker.address}" in result.out
    assert "git ls-remote" in result.out and 'git reset --hard --quiet "$upstream"' in result.out
    assert not any(project3.remote(i, "~/repo").exists() for i in range(3))


def test_secret_env_files_inside_the_checkout_are_never_stashed_or_cleaned(project1):
    """env_file in the checkout, named through ~ while repo_path is absolute: resolved on the worker."""
    repo = project1.remote(0, "~/repo")
    project1.write_config(repo_path=str(repo), env_file="~/repo/.env")
    assert run("sync").code == 0
    secrets = {".env": "A=new\n", ".env.previous": "A=old\n", ".env.values": "A=new\0"}
    for name, text in secrets.items():
        (repo / name).write_text(text)
    (repo / "scratch.py").write_text("print(1)\n")
    result = run("sync")
    assert result.code == 0, result.all
    assert "stashed" in result.out
    for name, text in secrets.items():
        assert (repo / name).read_text() == text
    stashed = git("stash", "show", "--include-untracked", "--name-only", "stash@{0}", cwd=repo).split()
    assert stashed == ["scratch.py"]
    objects = git("rev-list", "--all", "--objects", "--reflog", cwd=repo) + git("fsck", "--unreachable", "--no-reflogs", cwd=repo)
    for text in secrets.values():
        blob = subprocess.run(["git", "hash-object", "--stdin"], input=text, cwd=repo, capture_output=True, text=True).stdout
        assert blob.strip() not in objects  # no secret was ever written into git's objects


def test_sync_refuses_while_a_run_is_alive_unless_forced(project1):
    assert run("sync").code == 0
    repo = project1.remote(0, "~/repo")
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "1000", "--sleep", "0.1").code == 0
    (repo / "outputs").mkdir()
    (repo / "outputs" / "step_3.ckpt").write_text("weights\n")
    refused = run("sync")
    assert refused.code == 2, refused.all
    assert "run 'train' is alive: a sync would change the checkout under it" in refused.err
    assert "sync --force" in refused.err and len(refused.err.strip().splitlines()) == 1
    assert (repo / "outputs" / "step_3.ckpt").exists()
    forced = run("sync", "--force")
    assert forced.code == 0, forced.all
    assert "warning:" in forced.out and "run 'train' is alive; syncing the checkout under it anyway" in forced.out
    assert run("stop", "--grace", "2").code == 0


def test_commits_only_the_worker_has_are_kept_under_a_backup_ref(project1):
    assert run("sync").code == 0
    repo = project1.remote(0, "~/repo")
    (repo / "experiment.py").write_text("print('only here')\n")
    git("add", "experiment.py", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "worker-only", cwd=repo)
    local = git("rev-parse", "HEAD", cwd=repo)
    result = run("sync")
    assert result.code == 0, result.all
    refs = git("for-each-ref", "--format=%(refname) %(objectname)", "refs/tpuctl/backup", cwd=repo).splitlines()
    assert len(refs) == 1 and refs[0].endswith(local)
    ref = refs[0].split()[0]
    assert f"worker-only commits kept as {ref} (1 commit(s) not on origin/main)" in result.out
    assert git("rev-parse", "HEAD", cwd=repo) == git("rev-parse", "HEAD", cwd=project1.origin)


def test_an_unreadable_remote_is_reported_with_gits_reason(project1, tmp_path):
    missing = tmp_path / "nowhere" / "repo.git"
    result = run("--set", f"repo_url={missing}", "sync")
    assert result.code == 2
    assert f"cannot read {missing}: fatal: '{missing}' does not appear to be a git repository" in result.err
    assert len(result.err.strip().splitlines()) == 1

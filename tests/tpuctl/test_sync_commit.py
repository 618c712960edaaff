"""The VM runs the commit the user meant: the local checkout is compared with origin/BRANCH before a sync,
the workers' commit with the local HEAD after it, and each run records the commit it ran."""

from __future__ import annotations

import json

import pytest

from tests.helpers import git
from tests.tpuctl.helpers import run
from tpuctl.console import TpuctlError
from tpuctl.ops.sync import parse_synced

COMMIT = ("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet")


def _unpushed(folder) -> str:
    (folder / "reward.py").write_text("fixed\n")
    git("add", "reward.py", cwd=folder)
    git(*COMMIT, "-m", "the fix", cwd=folder)
    return f"1 commit(s) not on origin/main: {git('rev-parse', '--short=7', 'HEAD', cwd=folder)}"


def _dirty(folder) -> str:
    (folder / "README.md").write_text("edited, not committed\n")
    return "uncommitted changes to 1 tracked file(s): README.md"


def _other_branch(folder) -> str:
    git("checkout", "--quiet", "-b", "experiment", cwd=folder)
    return "on branch 'experiment', not 'main'"


def test_a_checkout_at_origin_syncs_and_says_the_workers_match_it(laptop):
    result = run("sync")
    assert result.code == 0, result.all
    head = git("rev-parse", "HEAD", cwd=laptop.folder)
    assert f"workers at {head[:7]} = your HEAD" in result.out


@pytest.mark.parametrize("change", [_unpushed, _dirty, _other_branch], ids=["unpushed", "dirty", "other-branch"])
def test_what_the_workers_would_miss_is_refused_then_allowed(laptop, change):
    expected = change(laptop.folder)
    refused = run("sync")
    assert refused.code == 2, refused.all
    assert expected in refused.err and "--allow-unpushed" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert not laptop.remote(0, "~/repo").exists()
    allowed = run("sync", "--allow-unpushed")
    assert allowed.code == 0, allowed.all
    worker_head = git("rev-parse", "HEAD", cwd=laptop.remote(0, "~/repo"))
    assert worker_head == git("rev-parse", "origin/main", cwd=laptop.folder)
    local = git("rev-parse", "HEAD", cwd=laptop.folder)
    shown = (f"workers at {worker_head[:7]} = your HEAD" if local == worker_head else
             f"workers at {worker_head[:7]}, your HEAD is {local[:7]} (1 commit(s) only in your HEAD, 0 only on the workers)")
    assert shown in allowed.out


def test_a_project_outside_git_is_synced_without_a_comparison(project1):
    result = run("sync")
    assert result.code == 0, result.all
    assert "your HEAD" not in result.out


def test_a_project_in_another_repository_is_not_compared(project1, tmp_path):
    """tpuctl.toml kept in an infra repository: its state says nothing about what the workers run."""
    infra = tmp_path / "infra.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(infra), cwd=tmp_path)
    folder = project1.folder
    git("init", "--quiet", "--initial-branch=main", cwd=folder)
    git("remote", "add", "origin", str(infra), cwd=folder)
    git("add", "tpuctl.toml", cwd=folder)
    git(*COMMIT, "-m", "infra, never pushed", cwd=folder)
    result = run("sync")
    assert result.code == 0, result.all
    assert f"local checkout {folder}: its origin {infra} is not repo_url {project1.origin}" in result.out
    assert "your HEAD" not in result.out
    assert git("rev-parse", "HEAD", cwd=project1.remote(0, "~/repo")) == git("rev-parse", "main", cwd=project1.origin)


def test_launch_records_the_workers_commit_and_status_shows_it(project1):
    assert run("sync").code == 0
    head = git("rev-parse", "HEAD", cwd=project1.remote(0, "~/repo"))
    assert run("launch", "--", "./fake_trainer.sh", "--steps", "1", "--sleep", "0").code == 0
    assert run("tail", "--until-exit").code == 0
    meta = json.loads(next((project1.remote(0, "~/repo") / "logs").glob("train_*.meta.json")).read_text())
    assert meta["git_head"] == head
    status = run("status")
    assert status.code == 0 and head[:7] in status.out, status.all
    as_json = json.loads(run("status", "--json").out)
    assert as_json[0]["meta"]["git_head"] == head


def test_smoke_refuses_what_the_workers_would_miss_too(laptop):
    expected = _unpushed(laptop.folder)
    result = run("smoke")
    assert result.code == 2 and expected in result.err and "--allow-unpushed" in result.err, result.all
    assert not laptop.remote(0, "~/repo").exists()


SHA1, SHA256 = "0123456789abcdef" * 2 + "01234567", "0123456789abcdef" * 4


@pytest.mark.parametrize("head", [SHA1, SHA256])
def test_a_worker_head_is_a_full_object_name(head):
    assert parse_synced(f"head={head}\nstatus=## main...origin/main\n").head == head


@pytest.mark.parametrize("head", ["--output=/tmp/pwned", "HEAD", "main", SHA1[:-1], SHA1.upper(), SHA1 + "0",
                                  f"{SHA1}...main", f"{SHA1} --", "", "\u0660" * 40])
def test_a_worker_head_that_is_not_an_object_name_is_an_unreadable_answer(head):
    with pytest.raises(TpuctlError, match="unreadable answer from the sync: head="):
        parse_synced(f"head={head}\nstatus=## main\n")


def test_a_refusal_carries_no_head():
    synced = parse_synced("refused=origin/main stores files in Git LFS\n")
    assert synced.refused and synced.head == ""

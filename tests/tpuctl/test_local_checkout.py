"""tpuctl.local_checkout on real git repositories: what the workers would miss from this checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import git
from tpuctl.local_checkout import compare_heads, inspect_checkout, same_repository


def _commit(work: Path, name: str, text: str) -> str:
    (work / name).write_text(text)
    git("add", "--", name, cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", f"edit {name}", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


@pytest.fixture
def clone(origin, tmp_path) -> Path:
    work = tmp_path / "laptop"
    git("clone", "--quiet", str(origin), str(work), cwd=tmp_path)
    return work


def test_a_clean_checkout_at_origin_has_no_problems(clone):
    state = inspect_checkout(clone / "fake_trainer.sh", "main") or inspect_checkout(clone, "main")
    assert state is not None and state.folder == clone
    assert state.problems() == []
    assert state.head == git("rev-parse", "HEAD", cwd=clone) == state.upstream
    assert compare_heads(state, state.head) == f"workers at {state.head[:7]} = your HEAD"


def test_unpushed_commits_are_named_by_short_hash_newest_first(clone):
    first = _commit(clone, "a.py", "1\n")
    second = _commit(clone, "b.py", "2\n")
    state = inspect_checkout(clone, "main")
    assert state.unpushed == (second[:7], first[:7])
    assert state.problems() == [f"2 commit(s) not on origin/main: {second[:7]}, {first[:7]}"]
    upstream = state.upstream
    assert compare_heads(state, upstream) == (f"workers at {upstream[:7]}, your HEAD is {second[:7]} "
                                              "(2 commit(s) only in your HEAD, 0 only on the workers)")


def test_many_unpushed_commits_are_counted_past_five(clone):
    for n in range(7):
        _commit(clone, "n.txt", f"{n}\n")
    (problem,) = inspect_checkout(clone, "main").problems()
    assert problem.startswith("7 commit(s) not on origin/main: ") and problem.endswith(" and 2 more")
    assert problem.count(", ") == 4


def test_edits_to_tracked_files_count_and_untracked_files_do_not(clone):
    (clone / "README.md").write_text("edited\n")
    (clone / "new file; $(touch pwned).py").write_text("untracked\n")
    (clone / "fake_trainer.sh").write_text("staged\n")
    git("add", "fake_trainer.sh", cwd=clone)
    state = inspect_checkout(clone, "main")
    assert sorted(state.dirty) == ["README.md", "fake_trainer.sh"]
    assert state.problems() == [f"uncommitted changes to 2 tracked file(s): {', '.join(state.dirty)}"]
    assert not (clone / "pwned").exists()


def test_a_renamed_tracked_file_is_one_path(clone):
    git("mv", "--", "README.md", "-n README.md", cwd=clone)
    assert inspect_checkout(clone, "main").dirty == ("-n README.md",)


def test_another_branch_and_a_detached_head_are_named(clone):
    git("checkout", "--quiet", "-b", "feature", cwd=clone)
    assert inspect_checkout(clone, "main").problems() == ["on branch 'feature', not 'main'"]
    head = git("rev-parse", "HEAD", cwd=clone)
    git("checkout", "--quiet", "--detach", cwd=clone)
    assert inspect_checkout(clone, "main").problems() == [f"HEAD detached at {head[:7]}, not 'main'"]


def test_a_branch_origin_lacks_is_reported_with_the_push_to_run(clone):
    git("checkout", "--quiet", "-b", "exp", cwd=clone)
    assert inspect_checkout(clone, "exp").problems() == ["no origin/exp here (push it: git push -u origin exp)"]


def test_workers_on_a_commit_this_checkout_lacks(clone, tmp_path):
    other = tmp_path / "elsewhere"
    git("clone", "--quiet", str(clone.parent / "origin.git"), str(other), cwd=tmp_path)
    pushed = _commit(other, "c.py", "3\n")
    git("push", "--quiet", "origin", "main", cwd=other)
    state = inspect_checkout(clone, "main")
    assert state.problems() == []  # origin/main here is stale: nothing local is missing from it
    assert compare_heads(state, pushed) == (f"workers at {pushed[:7]}, your HEAD is {state.short_head} "
                                            f"(git fetch to compare: {pushed[:7]} is not here)")


def test_outside_a_work_tree_there_is_nothing_to_inspect(tmp_path):
    assert inspect_checkout(tmp_path, "main") is None


@pytest.mark.parametrize("origin_url, repo_url", [
    ("git@github.com:acme/grpo.git", "https://github.com/acme/grpo"),
    ("https://github.com/acme/grpo/", "https://github.com/acme/grpo.git"),
    ("ssh://git@github.com/acme/grpo.git", "git@github.com:acme/grpo"),
    ("ssh://git@github.com:22/acme/grpo.git/", "https://x-access-token@GitHub.com/acme/grpo"),
    ("/srv/git/grpo.git", "file:///srv/git/grpo"),
])
def test_the_same_repository_written_differently_is_the_same(origin_url, repo_url):
    assert same_repository(origin_url, repo_url)


@pytest.mark.parametrize("origin_url, repo_url", [
    ("git@github.com:acme/infra.git", "https://github.com/acme/grpo.git"),
    ("https://gitlab.com/acme/grpo.git", "https://github.com/acme/grpo.git"),
    ("/srv/git/grpo.git", "/srv/other/grpo.git"),
    ("", "https://github.com/acme/grpo.git"),
])
def test_another_repository_is_not_the_same(origin_url, repo_url):
    assert not same_repository(origin_url, repo_url)


def test_the_checkout_records_its_origin_url(clone, origin):
    assert inspect_checkout(clone, "main").origin_url == str(origin)
    git("remote", "remove", "origin", cwd=clone)
    assert inspect_checkout(clone, "main").origin_url == ""

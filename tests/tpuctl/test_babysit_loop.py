"""The babysit loop's steps against real sshd workers (tpuctl.ops.babysit.Babysitter), one at a time."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import git
from tests.tpuctl.helpers import run
from tpuctl.ops import events
from tpuctl.ops.babysit import Babysitter, Goal, Seen
from tpuctl.ops.recovery import SUSPECT, UNREACHABLE, Action, Decision, History, Limits, Observation
from tpuctl.transport import Session


def sitter(project, path: Path) -> tuple[Babysitter, list]:
    session, workers = project.session()
    session.close()
    return Babysitter(session.target, Goal("train", ["bash", "x.sh"], Limits(), Path(".env"), 0.1), path,
                      lambda event: None), workers


def test_a_failed_log_that_cannot_be_read_still_ends_with_the_done_event(project1, tmp_path):
    path = tmp_path / "train.events.jsonl"
    babysitter, workers = sitter(project1, path)
    seen = Seen(Observation("READY", "n1", "", ("exited",), (1,), "train_1"), workers, ["~/repo/logs/gone.log"])
    code = babysitter.act(Decision(Action.FAIL, "worker 0: the run exited 1", 1, counts_failure="train_1"), seen)
    assert code == 1 and babysitter.failure_tail == []
    assert [e["event"] for e in events.read(path)][-1] == "done"


def write_finished_babysit(project) -> None:
    node = {"accelerator_type": "v4-8", "runtime_version": "v2", "spot": True, "preemptible": False, "queued": False,
            "labels": {}, "network": "", "subnetwork": "", "external_ips": True, "ssh_keys": ""}
    path = events.events_path("long", project.folder / "logs")
    events.append(path, "goal", command=["bash", "x.sh"], node=node, name="long", max_preemptions=10, max_failures=0)
    events.append(path, "launched", run_id="long_1")
    events.append(path, "action", action=Action.RECREATE, reason="node PREEMPTED", preempted_node="n1")
    events.append(path, "launched", run_id="long_2")
    events.append(path, "done", result="succeed", exit_code=0)


def test_the_events_file_lives_in_the_project_folder_whatever_the_current_folder(project1, monkeypatch):
    write_finished_babysit(project1)
    project1.write_config(name="node-1", project="my-project-123", zone="us-central2-b")
    inner = project1.folder / "src" / "deep"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    status = run("status", "--name", "long")
    assert "babysit: 1 restart(s), 1 preemption(s), 0 failure(s)" in status.out, status.all
    again = run("babysit", "--name", "long", "--", "bash", "x.sh")
    assert again.code == 2 and "this command already finished (succeed)" in again.err, again.all
    assert not (inner / "logs").exists()


@pytest.mark.parametrize("config, env_text, message", [
    ({}, "# nothing yet\n", "env file '.env' defines no variables"),
    ({"forward_agent": True}, None, "forward_agent: expected an SSH agent on this machine"),
    ({"deploy_key": "~/no-such-key"}, None, "deploy_key: expected a private key file, received '~/no-such-key'"),
])
def test_what_prepare_would_refuse_days_later_is_refused_before_babysit_begins(project1, monkeypatch, config,
                                                                               env_text, message):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    project1.write_config(name="node-1", project="my-project-123", zone="us-central2-b",
                          tpu_api_endpoint="http://127.0.0.1:1", **config)  # nothing answers there
    project1.write_env(env_text)
    refused = run("babysit", "--name", "long", "--", "bash", "x.sh")
    assert refused.code == 2 and message in refused.err, refused.all
    assert not (project1.folder / "logs").exists()


def test_a_step_refused_mid_run_is_a_prepare_failure_to_retry_not_the_end(project1, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # the agent went away days into the run
    babysitter, workers = sitter(project1, tmp_path / "train.events.jsonl")
    babysitter.target = replace(babysitter.target, forward_agent=True)
    with Session(babysitter.target) as session:
        failed = babysitter.prepare(session, workers)
    assert failed is not None and failed.startswith("sync: forward_agent: expected an SSH agent"), failed


def push_commit(origin: Path, text: str) -> str:
    work = origin.parent / "origin-work"
    (work / "README.md").write_text(text)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-am", text, cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def test_a_resumed_run_keeps_the_code_that_wrote_its_checkpoints_unless_told_to_follow(project1, tmp_path):
    path = tmp_path / "train.events.jsonl"
    babysitter, workers = sitter(project1, path)
    first = git("rev-parse", "main", cwd=project1.origin)
    with Session(babysitter.target) as session:
        assert babysitter.sync_step(session, workers) is None and babysitter.synced_head == first
        events.append(path, "launched", run_id="train_1", head=first)  # the first launch, then a preemption
        moved = push_commit(project1.origin, "a change pushed while the run was going")
        refused = babysitter.sync_step(session, workers)
        assert refused == (f"origin/main is now at {moved[:7]}, but the run began at {first[:7]} and resumes "
                           f"from checkpoints that code wrote: push {first[:7]} back to origin/main, or start "
                           f"babysit again with --follow-branch to resume on the new code")
        babysitter.goal.follow_branch = True
        assert babysitter.sync_step(session, workers) is None and babysitter.synced_head == moved


def test_a_local_checkout_the_workers_would_not_run_is_refused_before_babysit_begins(laptop):
    folder = laptop.folder
    (folder / "reward.py").write_text("fixed\n")
    git("add", "reward.py", cwd=folder)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "the fix", cwd=folder)
    laptop.write_config(name="node-1", project="my-project-123", zone="us-central2-b",
                        tpu_api_endpoint="http://127.0.0.1:1")  # nothing answers there
    refused = run("babysit", "--name", "long", "--", "bash", "x.sh")
    unpushed = f"1 commit(s) not on origin/main: {git('rev-parse', '--short=7', 'HEAD', cwd=folder)}"
    assert refused.code == 2 and unpushed in refused.err and "--allow-unpushed" in refused.err, refused.all
    assert not (folder / "logs").exists()
    allowed = run("babysit", "--allow-unpushed", "--name", "long", "--", "bash", "x.sh")
    assert allowed.code == 1 and "cannot reach the TPU API" in allowed.err, allowed.all  # past the check


def test_a_suspect_picture_is_timed_on_one_node_and_starts_over_on_another(project1, tmp_path):
    babysitter, _ = sitter(project1, tmp_path / "train.events.jsonl")
    assert babysitter.timed(History(), "n1") == History()
    babysitter.note_streak(SUSPECT, "n1")
    time.sleep(0.2)
    babysitter.note_streak(SUSPECT, "n1")  # the same picture again: still timed from its first turn
    lasted = babysitter.timed(History(), "n1")
    assert lasted.suspect_s >= 0.2 and lasted.unreachable_s == 0.0
    assert babysitter.timed(History(), "n2") == History()  # a recreated node: another picture
    babysitter.note_streak(UNREACHABLE, "n1")
    assert babysitter.timed(History(), "n1").suspect_s == 0.0 and babysitter.timed(History(), "n1").unreachable_s < 0.2
    babysitter.note_streak("", "n1")
    assert babysitter.timed(History(), "n1") == History()

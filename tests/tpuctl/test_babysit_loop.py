"""The babysit loop's steps against real sshd workers (tpuctl.ops.babysit.Babysitter), one at a time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.tpuctl.helpers import run
from tpuctl.ops import events
from tpuctl.ops.babysit import Babysitter, Goal, Seen
from tpuctl.ops.recovery import Action, Decision, Limits, Observation
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

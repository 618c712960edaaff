"""The babysit loop's steps against real sshd workers (tpuctl.ops.babysit.Babysitter), one at a time."""

from __future__ import annotations

from pathlib import Path

from tpuctl.ops import events
from tpuctl.ops.babysit import Babysitter, Goal, Seen
from tpuctl.ops.recovery import Action, Decision, Limits, Observation


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

"""The peer benchmark's summary logic (bench/peers/workload.py): the median table over runs, the ratio
to the fastest peer, and the checks that reject a run that did not do the workload."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "peers"))
import workload  # noqa: E402


def _rec(trainer, run, step_s, rollout_s, update_s, tokens=(64,), moved=50):
    per_step = [{"step_s": s, "rollout_s": r, "update_s": u} for s, r, u in zip(step_s, rollout_s, update_s, strict=True)]
    return workload.record(trainer, run, per_step, list(tokens), 0.99, moved, 50, steps=len(step_s))


def test_phase_table_takes_steps_two_on_over_every_run():
    records = [
        _rec("a", 1, [9.0, 1.0, 2.0, 3.0], [5.0, 0.1, 0.2, 0.3], [4.0, 0.9, 1.8, 2.7]),
        _rec("a", 2, [8.0, 4.0, 5.0, 6.0], [5.0, 0.4, 0.5, 0.6], [3.0, 3.6, 4.5, 5.4]),
        _rec("b", 1, [7.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0], [6.0, 1.0, 1.0, 1.0]),
    ]
    table = workload.phase_table(records)
    # a's steps 2..4 of both runs: 1, 2, 3, 4, 5, 6 -> 3.5 (the compile steps 9 and 8 are left out)
    assert table["a"] == {"step_s": 3.5, "rollout_s": 0.35, "update_s": pytest.approx(3.15)}
    assert table["b"] == {"step_s": 2.0, "rollout_s": 1.0, "update_s": 1.0}
    assert list(table) == ["a", "b"]
    assert workload.phase_table(records, min)["a"] == {"step_s": 1.0, "rollout_s": 0.1, "update_s": 0.9}


def test_ratio_is_to_the_fastest_peer_of_each_phase():
    table = {"ours": {"step_s": 3.0, "rollout_s": 1.0, "update_s": 2.0},
             "p": {"step_s": 2.0, "rollout_s": 0.5, "update_s": 1.5},
             "q": {"step_s": 1.5, "rollout_s": 0.8, "update_s": 0.5},
             "shown_only": {"step_s": 0.1, "rollout_s": 0.1, "update_s": 0.1}}
    assert workload.ratios_to_best_peer(table, "ours", ["p", "q"]) == {"step_s": 2.0, "rollout_s": 2.0,
                                                                       "update_s": 4.0}
    assert workload.ratios_to_best_peer(table, "ours", ["absent"]) == {}
    assert "ours / best" in workload.format_table(table, {"step_s": 2.0, "rollout_s": 2.0, "update_s": 4.0}, "ours")


def test_problems_name_short_completions_unmoved_tensors_and_missing_steps():
    good = _rec("a", 1, [1.0, 1.0], [0.5, 0.5], [0.5, 0.5])
    assert workload.problems(good) == []
    short = _rec("a", 1, [1.0, 1.0], [0.5, 0.5], [0.5, 0.5], tokens=(63, 64))
    assert workload.problems(short) == ["tokens per completion [63, 64], expected exactly [64]"]
    frozen = _rec("a", 1, [1.0, 1.0], [0.5, 0.5], [0.5, 0.5], moved=48)
    assert workload.problems(frozen) == ["2 of 50 parameter tensors did not move"]
    missing = dict(good, update_s=[0.5])
    assert workload.problems(missing) == ["expected 2 steps, got [2, 2, 1]"]


def test_the_reward_is_text_length_mod_7_over_7():
    assert [workload.length_reward("x" * n) for n in (0, 3, 7, 15)] == [0.0, 3 / 7, 0.0, 1 / 7]

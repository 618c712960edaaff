"""Reward functions on hand-written completions, including malformed ones."""

import numpy as np
import pytest

from trainer.rewards import (
    correctness_reward,
    extract_boxed,
    extract_flexible,
    extract_strict,
    format_reward,
    score_completions,
    tag_count_reward,
)


@pytest.mark.parametrize("completion, gold, mode, expected", [
    ("She sold 48/2 = 24 in May.\n#### 72", "72", "strict", 1.0),
    ("#### 1,000", "1000", "strict", 1.0),
    ("#### $18.", "18", "strict", 1.0),
    ("the answer is 72", "72", "strict", 0.0),  # strict needs ####
    ("#### 70 ... wait, #### 72", "72", "strict", 1.0),  # the last #### counts
    ("so \\boxed{\\frac{1}{2}}", "0.5", "boxed", 1.0),
    ("\\boxed{72} then 13", "72", "any", 1.0),  # boxed is tried before the last number
    ("first 3 then 72", "72", "flexible", 1.0),
    ("first 72 then 3", "72", "flexible", 0.0),
    ("<think>12 + 60</think><answer>The total is 72.</answer>", "72", "any", 1.0),
    ("-5 degrees", "-5", "any", 1.0),
    ("no number here", "72", "any", 0.0),
    ("", "72", "any", 0.0),
    ("#### 72.0", "72", "strict", 1.0),
])
def test_correctness_on_hand_written_completions(completion, gold, mode, expected):
    assert correctness_reward(completion, gold, mode) == expected


def test_extractors_edge_cases():
    assert extract_strict("#### -3,400.50") == "-3400.50"
    assert extract_boxed("\\boxed{a{b}c} and \\boxed{x{y}}") == "x{y}"
    assert extract_boxed("\\boxed{unclosed") is None
    assert extract_flexible("costs $1,234.") == "1234"


@pytest.mark.parametrize("completion, expected", [
    ("<think>a</think><answer>3</answer>", 1.0),
    ("  <think>\nmulti\nline</think>\n<answer>3</answer>\n", 1.0),
    ("<think>a</think>", 0.0),
    ("<answer>3</answer><think>a</think>", 0.0),
    ("text <think>a</think><answer>3</answer>", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion, "3") == expected


@pytest.mark.parametrize("completion, expected", [
    ("<think>a</think><answer>3</answer>", 1.0),
    ("<think>a</think>", 0.5),
    ("<think><think>a</think><answer>3</answer>", 0.75),  # <think> twice scores nothing
    ("nothing", 0.0),
])
def test_tag_count_reward(completion, expected):
    assert tag_count_reward(completion, "3") == expected


def test_weighted_sum_and_errors_score_minus_one(monkeypatch):
    import trainer.rewards as rewards

    def exploding_format(completion, gold):
        if "boom" in completion:
            raise RuntimeError("bad sample")
        return format_reward(completion, gold)

    monkeypatch.setattr(rewards, "format_reward", exploding_format)
    completions = ["<think>x</think><answer>7</answer>", "#### 7 boom", "#### 6"]
    scores = score_completions(completions, ["7", "7", "7"], {"correctness": 1.0, "format": 0.5, "tag_count": 0.5})
    np.testing.assert_allclose(scores.by_name["correctness"], [1, 1, 0])
    np.testing.assert_allclose(scores.by_name["format"], [1, -1, 0])
    np.testing.assert_allclose(scores.by_name["tag_count"], [1, 0, 0])
    np.testing.assert_allclose(scores.total_N, [1 + 0.5 + 0.5, 1 - 0.5, 0])
    assert scores.num_errors == 1


def test_zero_weight_functions_are_not_run():
    scores = score_completions(["#### 7"], ["7"], {"correctness": 1.0, "format": 0.0})
    assert list(scores.by_name) == ["correctness"]


def test_a_reward_named_by_import_path_scores_like_the_builtin():
    completions = ["<think>a</think><answer>1</answer>", "<think><think>", ""]
    custom = score_completions(completions, ["1"] * 3, {"trainer.rewards:tag_count_reward": 2.0})
    builtin = score_completions(completions, ["1"] * 3, {"tag_count": 2.0})
    np.testing.assert_allclose(custom.total_N, builtin.total_N)
    np.testing.assert_allclose(custom.total_N, [2.0, 0.0, 0.0])
    assert list(custom.by_name) == ["trainer.rewards:tag_count_reward"]

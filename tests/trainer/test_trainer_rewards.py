"""Reward functions on completions in the forms real models write, including malformed ones."""

import numpy as np
import pytest
from math_verify import parse, verify

from trainer.rewards import (
    correctness_reward,
    extract_boxed,
    extract_flexible,
    extract_strict,
    format_reward,
    score_completions,
    tag_count_reward,
)

MODES = ("strict", "boxed", "flexible", "any")

# completion, gold, then the expected reward in the modes strict, boxed, flexible, any. Each value was
# reasoned by hand from the rules in trainer/rewards.py's docstring; where it rests on a judgement of
# math-verify's (percentages, units, `x = 18`), that judgement is pinned in
# test_math_verify_judgements_the_table_relies_on below.
TABLE = [
    # GSM8K's own format
    ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips altogether.\n#### 72", "72", 1, 0, 1, 1),
    ("#### 1,000", "1000", 1, 0, 1, 1),
    ("The total cost is $18.\n#### $18", "18", 1, 0, 1, 1),
    ("#### \\$18.00", "18", 1, 0, 1, 1),
    ("#### 1{,}000", "1000", 1, 0, 1, 1),
    ("#### 72.0", "72", 1, 0, 1, 1),
    ("#### 18\n\nHuman: what is 5 + 5?", "18", 1, 0, 0, 1),  # generation ran on past the answer
    # \boxed{} with \$, {,}, \text{}, \frac, thin spaces
    ("He pays 3 * 6 = 18 dollars.\n\\boxed{\\$18}", "18", 0, 1, 1, 1),
    ("\\boxed{\\$18.00}", "18", 0, 1, 1, 1),
    ("So the answer is \\boxed{1{,}000}.", "1000", 0, 1, 1, 1),
    ("<answer>\\boxed{\\$18}</answer>", "18", 0, 1, 1, 1),
    ("\\boxed{18 \\text{ dollars}}", "18", 0, 1, 1, 1),
    ("\\boxed{\\text{18}}", "18", 0, 1, 1, 1),
    ("Half of the pie is \\boxed{\\frac{1}{2}}", "0.5", 0, 1, 0, 1),  # the last number is the 2
    ("\\boxed{\\dfrac{3}{4}}", "0.75", 0, 1, 0, 1),
    ("The answer is $\\boxed{5{,}400}$ dollars.", "5400", 0, 1, 1, 1),
    ("\\boxed{1\\,000}", "1000", 0, 1, 1, 1),
    ("\\boxed {18}", "18", 0, 1, 1, 1),
    ("\\boxed{x = 18}", "18", 0, 1, 1, 1),
    # units and percentages
    ("The discount is 25%.\n#### 25", "25", 1, 0, 1, 1),
    ("\\boxed{25\\%}", "25", 0, 1, 1, 1),  # math-verify takes 25% for 25
    ("<answer>25%</answer>", "25", 0, 0, 1, 1),
    ("The rope is 18 cm long.\n#### 18 cm", "18", 1, 0, 1, 1),
    ("\\boxed{18\\text{ cm}}", "18", 0, 1, 1, 1),
    # <answer> with words around the number
    ("<think>12 + 60 = 72</think><answer>The total is 72 apples.</answer>", "72", 0, 0, 1, 1),
    ("<think>2000 - 500 = 1500</think><answer>She has $1,500 left.</answer>", "1500", 0, 0, 1, 1),
    ("<answer>72 apples</answer>", "72", 0, 0, 1, 1),
    ("<answer>\\frac{3}{4}</answer>", "0.75", 0, 0, 0, 1),
    ("<answer>$0.75</answer>", "0.75", 0, 0, 1, 1),
    # several candidate answers in one completion
    ("<think>first try \\boxed{7}, no, recheck</think><answer>8</answer>", "8", 0, 0, 1, 1),
    ("<think>draft #### 7 ... wrong</think><answer>8</answer>", "8", 0, 0, 1, 1),
    ("#### 70\nWait, I forgot the tip.\n#### 72", "72", 1, 0, 1, 1),
    ("\\boxed{70} is wrong, the answer is \\boxed{72}", "72", 0, 1, 1, 1),
    ("First \\boxed{7}. Rechecking: 3 + 5 = 8.\n#### 8", "8", 1, 0, 1, 1),  # #### is the later commitment
    ("#### 7\nActually the answer is \\boxed{8}.", "8", 0, 1, 1, 1),  # the box is the later one
    ("<answer>7</answer> Hmm, that's wrong. <answer>8</answer>", "8", 0, 0, 1, 1),
    ("<answer>8</answer>\nCheck: 8 + 2 = 10", "8", 0, 0, 0, 1),  # the tag beats a later number
    ("<answer>8</answer>\nOr maybe \\boxed{9}", "8", 0, 0, 0, 1),  # and a later box
    ("<think>3 + 5 = 8 so \\boxed{8}</think><answer>", "8", 0, 1, 1, 1),  # truncated: no complete tag
    # candidates math-verify cannot read fall through
    ("<answer>\\boxed{}</answer> The answer is 42.", "42", 0, 0, 1, 1),
    ("\\boxed{eighteen}\n\nIn digits: 18", "18", 0, 0, 1, 1),
    # negative and decimal golds
    ("The temperature falls to -5 degrees.\n#### -5", "-5", 1, 0, 1, 1),
    ("\\boxed{-5}", "-5", 0, 1, 1, 1),
    ("<answer>\u22125</answer>", "-5", 0, 0, 1, 1),  # a Unicode minus
    ("He ran 2.5 hours.\n#### 2.5", "2.5", 1, 0, 1, 1),
    ("\\boxed{0.50}", "0.5", 0, 1, 1, 1),
    ("#### 3.50", "3.5", 1, 0, 1, 1),
    # wrong answers that look right
    ("#### 180", "18", 0, 0, 0, 0),
    ("\\boxed{18.5}", "18", 0, 0, 0, 0),
    ("\\boxed{1,800}", "18", 0, 0, 0, 0),
    ("<answer>18 - 2 = 16</answer>", "18", 0, 0, 0, 0),
    ("<think>The answer is 72.</think><answer>27</answer>", "72", 0, 0, 0, 0),
    ("\\boxed{\\frac{1}{8}}", "18", 0, 0, 0, 0),
    ("I think it's 7 or 8. <answer>7</answer>", "8", 0, 0, 0, 0),
    ("\\boxed{18}.", "81", 0, 0, 0, 0),
    ("#### 1,000", "1", 0, 0, 0, 0),
    ("first 72 then 3", "72", 0, 0, 0, 0),
    # plain numbers
    ("the answer is 72", "72", 0, 0, 1, 1),
    ("-5 degrees", "-5", 0, 0, 1, 1),
    # nothing to read
    ("no number here", "72", 0, 0, 0, 0),
    ("", "72", 0, 0, 0, 0),
]


def test_the_table_is_large_enough():
    assert len(TABLE) >= 40


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("completion, gold, strict, boxed, flexible, any_", TABLE)
def test_correctness_table_in_every_mode(completion, gold, strict, boxed, flexible, any_, mode):
    expected = {"strict": strict, "boxed": boxed, "flexible": flexible, "any": any_}[mode]
    assert correctness_reward(completion, gold, mode) == expected


@pytest.mark.parametrize("gold, answer, equal", [
    ("18", "\\boxed{\\$18}", True),  # the wrapped form parses ...
    ("1000", "\\boxed{1{,}000}", True),
    ("18", "\\boxed{18 \\text{ dollars}}", True),
    ("18", "\\boxed{x = 18}", True),
    ("25", "\\boxed{25\\%}", True),  # a percentage counts as the bare number
    ("25", "25%", True),
    ("0.75", "\\frac{3}{4}", True),
    ("1500", "She has $1,500 left.", True),
    ("18", "\\boxed{18.5}", False),
])
def test_math_verify_judgements_the_table_relies_on(gold, answer, equal):
    assert verify(parse(gold), parse(answer)) is equal


def test_math_verify_cannot_read_the_bare_inner_latex():
    """Why extract_boxed hands over the wrapped form."""
    assert parse("\\$18") == [] and parse("1{,}000")[0] == 1


def test_extractors_edge_cases():
    assert extract_strict("#### -3,400.50") == "-3400.50"
    assert extract_boxed("\\boxed{a{b}c} and \\boxed{x{y}}") == "\\boxed{x{y}}"
    assert extract_boxed("\\boxed{unclosed") is None
    assert extract_flexible("costs $1,234.") == "1234"
    assert extract_flexible("costs \\$1{,}234.") == "1234"


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

"""GSM8K rewards as pure functions of (completion text, gold answer) -> float.

Correctness extracts a candidate answer (strict `#### n`, `\\boxed{...}`, `<answer>` tags, or the last
number) and checks it against the gold answer with math-verify. `score_completions` applies the
weighted set (built-in names, or `package.module:function` for a reward of your own); a reward
function that raises scores -1 for that sample and the run goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable

import numpy as np
from math_verify import parse, verify

from trainer.config import import_reward

_NUMBER = r"-?[0-9][0-9,]*(?:\.[0-9]+)?"
_STRICT = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
_LAST_NUMBER = re.compile(_NUMBER)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _clean_number(text: str) -> str:
    return text.replace(",", "").rstrip(".")


def extract_strict(completion: str) -> str | None:
    matches = _STRICT.findall(completion)
    return _clean_number(matches[-1]) if matches else None


def extract_boxed(completion: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = completion.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(completion)):
        depth += {"{": 1, "}": -1}.get(completion[i], 0)
        if depth < 0:
            return completion[begin:i]
    return None


def extract_flexible(completion: str) -> str | None:
    matches = _LAST_NUMBER.findall(completion)
    return _clean_number(matches[-1]) if matches else None


def extract_answer_tag(completion: str) -> str | None:
    tags = _ANSWER_TAG.findall(completion)
    return extract_flexible(tags[-1]) if tags else None


EXTRACTORS: dict[str, tuple[Callable[[str], str | None], ...]] = {
    "strict": (extract_strict,),
    "boxed": (extract_boxed,),
    "flexible": (extract_flexible,),
    "any": (extract_boxed, extract_strict, extract_answer_tag, extract_flexible),
}


@functools.lru_cache(maxsize=4096)
def answers_match(candidate: str, gold: str) -> bool:
    return bool(verify(parse(gold), parse(candidate)))


def correctness_reward(completion: str, gold: str, mode: str = "any") -> float:
    """1.0 when the first answer the mode's extractors find equals the gold answer, else 0.0."""
    for extract in EXTRACTORS[mode]:
        candidate = extract(completion)
        if candidate is not None:
            return 1.0 if answers_match(candidate, gold) else 0.0
    return 0.0


def format_reward(completion: str, gold: str) -> float:
    """1.0 for exactly `<think>...</think><answer>...</answer>` (whitespace around allowed)."""
    del gold
    return 1.0 if _FORMAT.fullmatch(completion) else 0.0


def tag_count_reward(completion: str, gold: str) -> float:
    """0.25 for each of the four tags that appears exactly once."""
    del gold
    return 0.25 * sum(completion.count(tag) == 1 for tag in _TAGS)


@dataclasses.dataclass
class RewardScores:
    total_N: np.ndarray  # weighted sum per completion
    by_name: dict[str, np.ndarray]  # unweighted score of each reward function
    num_errors: int  # (sample, function) pairs that raised and scored -1


def reward_function(name: str, correctness_mode: str) -> Callable[[str, str], float]:
    """A built-in reward by name, or the function a `package.module:function` name imports."""
    builtin = {"correctness": functools.partial(correctness_reward, mode=correctness_mode),
               "format": format_reward, "tag_count": tag_count_reward}
    if name in builtin:
        return builtin[name]
    function = import_reward(name)
    if function is None:
        raise ValueError(f"reward {name!r}: neither built-in nor an importable module:function")
    return function


def score_completions(completions: list[str], golds: list[str], weights: dict[str, float],
                      correctness_mode: str = "any") -> RewardScores:
    by_name, errors = {}, 0
    for name, weight in weights.items():
        if weight == 0:
            continue
        function = reward_function(name, correctness_mode)
        scores = np.zeros(len(completions), np.float32)
        for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
            try:
                scores[i] = function(completion, gold)
            except Exception:  # one bad sample must not end a long run: it scores -1
                scores[i], errors = -1.0, errors + 1
        by_name[name] = scores
    total = sum((weights[name] * scores for name, scores in by_name.items()), np.zeros(len(completions), np.float32))
    return RewardScores(total.astype(np.float32), by_name, errors)

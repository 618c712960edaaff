"""GSM8K rewards as pure functions of (completion text, gold answer) -> float.

Correctness picks the completion's final answer by the rules of `reward.correctness_mode`, and
math-verify decides whether it equals the gold answer:

- `strict`: the last `#### n` (verl / ReFT's rule).
- `boxed`: the last `\\boxed{...}`, handed to math-verify wrapped (`\\boxed{\\$18}`, `\\boxed{1{,}000}`,
  `\\boxed{18 \\text{ cm}}`: math-verify reads the wrapped form, not the bare inner LaTeX).
- `flexible`: the last number in the completion.
- `any`, the final answer in this order of precedence (the first candidate math-verify reads a value
  from wins; one it cannot read, such as `\\boxed{}` or `\\boxed{eighteen}`, falls through to the next):
  1. the last complete `<answer>...</answer>` block, because that is the format the GSM8K presets'
     system prompt asks for: inside it the later of its last `\\boxed{}` and its last `#### n`, then
     the other, then the block's whole text (math-verify reads `\\frac{3}{4}`, `$1,500`, `25%`, or
     the number after "the answer is", else the last number);
  2. outside a block, the later of the last `\\boxed{}` and the last `#### n` in the completion (what
     the completion commits to last), then the other;
  3. the last number in the completion.
  So a stray `\\boxed{7}` or `#### 7` in the reasoning never beats a final `<answer>8</answer>`.

Before extraction, number spellings from LaTeX are made plain: `\\$` -> `$`, `{,}` -> `,`, a thin
space between digit groups (`1\\,000`) is dropped, and the Unicode minus becomes `-`. Like math-verify,
the rules accept a percentage for the bare number and the reverse (`25%` for gold 25).

`score_completions` applies the weighted set (built-in names, or `package.module:function` for a reward
of your own); a reward function that raises scores -1 for that sample and the run goes on. math-verify
is imported on first use, so validating a config's reward names (`trainer --print-config`) does not
load it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from collections.abc import Callable, Iterator

import numpy as np

_NUMBER = r"-?[0-9][0-9,]*(?:\.[0-9]+)?"
_STRICT = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
_HASHES = re.compile(r"(?=####)")
_LAST_NUMBER = re.compile(_NUMBER)
_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THIN_SPACE_IN_NUMBER = re.compile(r"(?<=\d)\\[,!;: ](?=\d{3}(?!\d))")
_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def normalize_numbers(text: str) -> str:
    """LaTeX spellings of numbers as plain text: `\\$18` -> `$18`, `1{,}000` -> `1,000`, `1\\,000` -> `1000`."""
    text = text.replace("\\$", "$").replace("{,}", ",").replace("\u2212", "-")
    return _THIN_SPACE_IN_NUMBER.sub("", text)


def _clean_number(text: str) -> str:
    return text.replace(",", "").rstrip(".")


def _last_strict(text: str) -> tuple[int, str] | None:
    """(position in text, number) of the last `#### n`."""
    for start in reversed([m.start() for m in _HASHES.finditer(text)]):
        match = _STRICT.match(normalize_numbers(text[start:]))
        if match:
            return start, _clean_number(match.group(1))
    return None


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(position, `\\boxed{content}`) of the last box, braces balanced; a trailing period inside dropped."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    begin, depth = starts[-1].end(), 0
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            content = _THIN_SPACE_IN_NUMBER.sub("", text[begin:i]).strip().rstrip(".")
            return starts[-1].start(), "\\boxed{" + content + "}"
    return None


def extract_strict(completion: str) -> str | None:
    found = _last_strict(completion)
    return found[1] if found else None


def extract_boxed(completion: str) -> str | None:
    """The last `\\boxed{...}` as math-verify reads it: wrapped, braces balanced."""
    found = _last_boxed(completion)
    return found[1] if found else None


def extract_flexible(completion: str) -> str | None:
    matches = _LAST_NUMBER.findall(normalize_numbers(completion))
    return _clean_number(matches[-1]) if matches else None


def extract_answer_tag(completion: str) -> str | None:
    """The text of the last complete `<answer>...</answer>` block."""
    tags = _ANSWER_TAG.findall(completion)
    return tags[-1] if tags else None


def _marked(text: str) -> list[str]:
    """The last `\\boxed{}` and the last `#### n` of text, the later one first."""
    found = [f for f in (_last_boxed(text), _last_strict(text)) if f is not None]
    return [candidate for _, candidate in sorted(found, reverse=True)]


def candidates(completion: str, mode: str) -> Iterator[str]:
    """The mode's candidate final answers, in order of precedence (see the module docstring)."""
    match mode:
        case "any":
            block = extract_answer_tag(completion)
            if block is not None:
                yield from _marked(block)
                yield normalize_numbers(block)
            yield from _marked(completion)
            extract = extract_flexible
        case "strict":
            extract = extract_strict
        case "boxed":
            extract = extract_boxed
        case "flexible":
            extract = extract_flexible
        case _:
            raise ValueError(f"reward.correctness_mode: expected strict, boxed, flexible or any, received {mode!r}")
    candidate = extract(completion)
    if candidate is not None:
        yield candidate


@functools.lru_cache(maxsize=8192)
def parsed_value(text: str) -> tuple:
    """What math-verify reads from text: () when it finds no mathematical value (only strings)."""
    from math_verify import parse

    values = tuple(parse(text))
    return values if values and not isinstance(values[0], str) else ()


@functools.lru_cache(maxsize=8192)
def answers_match(candidate: str, gold: str) -> bool:
    from math_verify import verify

    return bool(verify(list(parsed_value(gold)), list(parsed_value(candidate))))


def correctness_reward(completion: str, gold: str, mode: str = "any") -> float:
    """1.0 when the final answer (the first candidate math-verify can read) equals the gold answer."""
    for candidate in candidates(completion, mode):
        if parsed_value(candidate):
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


REWARD_NAMES = ("correctness", "format", "tag_count")  # the built-in rewards


def import_reward(path: str) -> Callable[[str, str], float] | None:
    """The function `package.module:function` names (called as f(completion, gold) -> float), or None."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        return None
    try:
        function = getattr(importlib.import_module(module_name), attribute, None)
    except ImportError:
        return None
    return function if callable(function) else None


def reward_function(name: str, correctness_mode: str) -> Callable[[str, str], float]:
    """A built-in reward by name, or the function a `package.module:function` name imports."""
    match name:
        case "correctness":
            return functools.partial(correctness_reward, mode=correctness_mode)
        case "format":
            return format_reward
        case "tag_count":
            return tag_count_reward
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

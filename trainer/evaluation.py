"""Greedy pass@1 on the evaluation split, one problem per rollout row, with the training shapes."""

from __future__ import annotations

import numpy as np

from trainer import sharding
from trainer.data import Problem, left_pad
from trainer.model.tokenizer import ChatTokenizer
from trainer.rewards import correctness_reward
from trainer.rollout.base import RolloutBackend
from trainer.sampling import SamplingSettings


def evaluate(backend: RolloutBackend, tokenizer: ChatTokenizer, problems: list[Problem], *, rows: int,
             batches: int, prompt_length: int, max_new_tokens: int, system_prompt: str, correctness_mode: str,
             process_index: int, process_count: int) -> dict[str, float]:
    """Mean correctness of greedy completions of the first rows x batches problems (fewer if the split
    is smaller, the last batch padded with repeats that are not counted)."""
    greedy = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    local = rows // process_count
    scores: list[float] = []
    for start in range(0, min(rows * batches, len(problems)), rows):
        chunk = problems[start:start + rows]
        counted = len(chunk)
        chunk = chunk + [chunk[-1]] * (rows - len(chunk))
        mine = chunk[process_index * local:(process_index + 1) * local]
        ids, mask = left_pad([tokenizer.prompt_ids(p.question, system_prompt) for p in mine], prompt_length,
                             tokenizer.pad_id)
        out = backend.generate(ids, mask, greedy, seed=0)
        texts = tokenizer.decode_completions(out.completion_ids_NxC, out.completion_mask_NxC)
        local_scores = np.array([correctness_reward(t, p.answer, correctness_mode) for t, p in zip(texts, mine, strict=True)],
                                np.float32)
        scores.extend(sharding.gather_to_all(local_scores)[:counted].tolist())
    return {"eval/pass@1": float(np.mean(scores)), "eval/num_problems": float(len(scores))}

"""Greedy pass@1 on the evaluation split, one problem per rollout row, with the training shapes."""

from __future__ import annotations

import numpy as np

from trainer import sharding
from trainer.config import TrainerConfig
from trainer.data import Problem, left_pad
from trainer.model.tokenizer import ChatTokenizer
from trainer.rewards import correctness_reward
from trainer.rollout.base import RolloutBackend
from trainer.rollout.sampling import SamplingSettings
from trainer.runtime import Runtime


def evaluate(backend: RolloutBackend, tokenizer: ChatTokenizer, problems: list[Problem], config: TrainerConfig,
             runtime: Runtime) -> dict[str, float]:
    """Mean correctness of greedy completions of the first rows x eval.batches problems (fewer if the split
    is smaller, the last batch padded with repeats that are not counted)."""
    rows, rollout = config.rows, config.rollout
    greedy = SamplingSettings(max_new_tokens=rollout.max_new_tokens, temperature=0.0)
    scores: list[float] = []
    for start in range(0, min(rows * config.eval.batches, len(problems)), rows):
        chunk = problems[start:start + rows]
        counted = len(chunk)
        chunk = chunk + [chunk[-1]] * (rows - len(chunk))
        mine = chunk[runtime.this_process_rows(rows)]
        ids, mask = left_pad([tokenizer.prompt_ids(p.question, config.data.system_prompt) for p in mine],
                             rollout.prompt_length, tokenizer.pad_id)
        out = backend.generate(ids, mask, greedy, seed=0)
        texts = tokenizer.decode_completions(out.completion_ids_NxC, out.completion_mask_NxC)
        local_scores = np.array([correctness_reward(t, p.answer, config.reward.correctness_mode)
                                 for t, p in zip(texts, mine, strict=True)], np.float32)
        scores.extend(sharding.gather_to_all(local_scores)[:counted].tolist())
    return {"eval/pass@1": float(np.mean(scores)), "eval/num_problems": float(len(scores))}

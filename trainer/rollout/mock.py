"""A scripted backend for pipeline tests: completions come from a function of the prompt text."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trainer.model.tokenizer import ChatTokenizer
from trainer.rollout.base import RolloutBackend, RolloutOutput
from trainer.rollout.sampling import SamplingSettings


class MockBackend(RolloutBackend):
    name = "mock"

    def __init__(self, tokenizer: ChatTokenizer, complete: Callable[[str, int], str], logp: float | None = None):
        """complete(prompt_text, row_index) -> completion text; a stop token is appended when it fits. With
        logp, every generated token reports that log-prob, as an engine's would; without, none."""
        self.tokenizer = tokenizer
        self.complete = complete
        self.logp = logp
        self.pushes = 0

    def generate(self, prompt_ids_NxP, prompt_mask_NxP, settings: SamplingSettings, seed: int) -> RolloutOutput:
        n, c = prompt_ids_NxP.shape[0], settings.max_new_tokens
        ids = np.full((n, c), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((n, c), np.int32)
        for row in range(n):
            prompt = self.tokenizer.decode(prompt_ids_NxP[row][prompt_mask_NxP[row].astype(bool)])
            tokens = (self.tokenizer.encode(self.complete(prompt, row)) + [self.tokenizer.stop_ids[0]])[:c]
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return RolloutOutput(ids, mask, None if self.logp is None else np.where(mask > 0, self.logp, 0.0).astype(np.float32))

    def push_weights(self, params) -> None:
        self.pushes += 1

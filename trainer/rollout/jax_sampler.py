"""The built-in sampler as a rollout backend: runs SPMD on the trainer's own mesh and parameters."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from trainer import sharding
from trainer.config import TrainerConfig
from trainer.model.qwen2 import Qwen2ForCausalLM
from trainer.model.tokenizer import ChatTokenizer
from trainer.rollout.base import RolloutBackend, RolloutOutput
from trainer.rollout.sampling import SamplingSettings, generate, sampling_method
from trainer.runtime import Runtime


class JaxSamplerBackend(RolloutBackend):
    name = "jax"

    def __init__(self, model: Qwen2ForCausalLM, mesh: Mesh, stop_ids: list[int], pad_id: int,
                 prefill_buckets: list[int], inverse_cdf: bool = False, group_size: int = 1):
        self.model = model
        self.group_size = group_size  # rows that share a prompt share its prefill (sharding.shared_prompt_group)
        self.mesh = mesh
        self.stop_ids = tuple(stop_ids)
        self.pad_id = pad_id
        self.prefill_buckets = sorted(prefill_buckets)
        self.inverse_cdf = inverse_cdf
        self.params = None

    @classmethod
    def create(cls, config: TrainerConfig, model: Qwen2ForCausalLM, runtime: Runtime, tokenizer: ChatTokenizer,
               model_dir: Path) -> JaxSamplerBackend:
        return cls(model, runtime.mesh, tokenizer.stop_ids, tokenizer.pad_id,
                   config.rollout.prefill_buckets or [config.rollout.prompt_length],
                   sampling_method(config.rollout.sampling_method, runtime.platform) == "inverse_cdf",
                   config.rollout.group_size)

    def push_weights(self, params) -> None:
        # Same devices and layout as the trainer: holding a reference is the whole push.
        self.params = params

    def bucket_for(self, longest_prompt: int) -> int:
        """The smallest prefill bucket holding every prompt of the step (agreed across processes)."""
        longest = int(sharding.gather_to_all(np.array([longest_prompt])).max())
        return next((b for b in self.prefill_buckets if b >= longest), self.prefill_buckets[-1])

    def generate(self, prompt_ids_NxP, prompt_mask_NxP, settings: SamplingSettings, seed: int) -> RolloutOutput:
        if self.params is None:
            raise RuntimeError("JaxSamplerBackend.generate before push_weights")
        bucket = self.bucket_for(int(prompt_mask_NxP.sum(axis=1).max()))
        # Prompts are left-padded, so the last `bucket` columns hold every real token.
        # Evaluation's rows (one per problem) share nothing: their program (prompt_group 1) compiles once too.
        group = sharding.shared_prompt_group(prompt_ids_NxP, prompt_mask_NxP, self.group_size)
        ids = sharding.global_rows(np.ascontiguousarray(prompt_ids_NxP[:, -bucket:]), self.mesh)
        mask = sharding.global_rows(np.ascontiguousarray(prompt_mask_NxP[:, -bucket:]), self.mesh)
        outputs = generate(self.model, self.params, ids, mask, jax.random.key(seed), np.float32(settings.temperature),
                           max_new_tokens=settings.max_new_tokens, top_k=settings.top_k, top_p=settings.top_p,
                           stop_ids=() if settings.ignore_eos else self.stop_ids, pad_id=self.pad_id,
                           inverse_cdf=self.inverse_cdf, prompt_group=group)
        ids_NxC, mask_NxC, logps_NxC = (sharding.local_rows(x, self.mesh) for x in outputs)
        return RolloutOutput(ids_NxC.astype(np.int32), mask_NxC.astype(np.int32), logps_NxC.astype(np.float32))

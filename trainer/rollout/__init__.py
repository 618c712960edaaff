"""Rollout backends: the built-in JAX sampler and the sglang-jax engine, behind one interface."""

from __future__ import annotations

from pathlib import Path

from trainer.config import TrainerConfig
from trainer.model.qwen2 import Qwen2ForCausalLM
from trainer.model.tokenizer import ChatTokenizer
from trainer.rollout.base import RolloutBackend, RolloutOutput
from trainer.runtime import Runtime

__all__ = ["RolloutBackend", "RolloutOutput", "make_backend"]


def make_backend(config: TrainerConfig, model: Qwen2ForCausalLM, runtime: Runtime, tokenizer: ChatTokenizer,
                 model_dir: Path) -> RolloutBackend:
    if config.rollout.backend == "sglang_jax":
        from trainer.rollout.sglang_jax import SglangJaxBackend

        return SglangJaxBackend(config, model.config, runtime, tokenizer, model_dir)
    from trainer.rollout.jax_sampler import JaxSamplerBackend

    return JaxSamplerBackend(model, runtime.mesh, tokenizer.stop_ids, tokenizer.pad_id,
                             config.rollout.prefill_buckets or [config.rollout.prompt_length])

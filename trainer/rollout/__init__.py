"""Rollout backends behind one interface: the built-in JAX sampler and the sglang-jax engine, chosen by
`rollout.backend`; the only place that name is read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trainer.config import TrainerConfig
from trainer.model.qwen2 import Qwen2ForCausalLM
from trainer.model.tokenizer import ChatTokenizer
from trainer.rollout.base import RolloutBackend, RolloutOutput
from trainer.runtime import Runtime

if TYPE_CHECKING:
    from trainer.rollout.jax_sampler import JaxSamplerBackend
    from trainer.rollout.sglang_jax import SglangJaxBackend

__all__ = ["RolloutBackend", "RolloutOutput", "backend_class", "make_backend"]


def backend_class(name: str) -> type[JaxSamplerBackend | SglangJaxBackend]:
    """The backend `rollout.backend` names (imported only when chosen: sglang-jax is heavy)."""
    match name:
        case "jax":
            from trainer.rollout.jax_sampler import JaxSamplerBackend

            return JaxSamplerBackend
        case "sglang_jax":
            from trainer.rollout.sglang_jax import SglangJaxBackend

            return SglangJaxBackend
    raise ValueError(f"rollout.backend: expected jax or sglang_jax, received {name!r}")


def make_backend(config: TrainerConfig, model: Qwen2ForCausalLM, runtime: Runtime, tokenizer: ChatTokenizer,
                 model_dir: Path) -> RolloutBackend:
    """The run's backend, started (the loop shuts it down)."""
    return backend_class(config.rollout.backend).create(config, model, runtime, tokenizer, model_dir)

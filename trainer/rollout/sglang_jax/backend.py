"""The sglang_jax rollout backend: start the engine, generate with log-probs, push weights, shut down.

A push writes the trainer's parameters, converted by one jitted function (layout, dtype, sharding), into
the model runner's state leaves, which the engine's jitted forward reads on every call.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding

from trainer.config import TrainerConfig
from trainer.metrics import timed
from trainer.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from trainer.model.tokenizer import ChatTokenizer
from trainer.rollout.base import RolloutBackend, RolloutOutput
from trainer.rollout.sampling import SamplingSettings
from trainer.rollout.sglang_jax import patches_0_1_0rc0 as patches
from trainer.rollout.sglang_jax import settings
from trainer.rollout.sglang_jax.pod import as_engine_array, pod_engine_mesh
from trainer.rollout.sglang_jax.weights import HeadLayout, engine_tensors, leaves_to_replace
from trainer.runtime import Runtime


class SglangJaxBackend(RolloutBackend):
    name = "sglang_jax"

    def __init__(self, config: TrainerConfig, model_config: Qwen2Config, runtime: Runtime,
                 tokenizer: ChatTokenizer, model_dir: Path):
        os.environ.setdefault("JAX_PLATFORMS", runtime.platform)  # the engine asserts it matches `device`
        from sgl_jax.srt.entrypoints.engine import Engine

        self.model_config = model_config
        self.stop_ids = list(tokenizer.stop_ids)
        self.pad_id = tokenizer.pad_id
        self.engine = patches.start_engine(Engine, settings.engine_kwargs(config, runtime, model_dir), self.pad_id)
        self.runner = self.engine.scheduler_info["scheduler"].tp_worker.worker.model_runner
        attn = self.runner.model.model.layers[0].self_attn
        self.engine_heads = HeadLayout(attn.q_head_num, attn.kv_head_num, attn.head_dim)
        self.our_heads = HeadLayout(model_config.num_attention_heads, model_config.num_key_value_heads,
                                    model_config.head_dim)
        self._seconds = {"time/engine_weight_push_s": 0.0}
        self._flush_on_push = not config.rollout.sglang.disable_radix_cache
        self._convert = None  # built on the first push, when the params' shardings are known
        self._target_indices: list[int] = []

    @classmethod
    def create(cls, config: TrainerConfig, model: Qwen2ForCausalLM, runtime: Runtime, tokenizer: ChatTokenizer,
               model_dir: Path) -> SglangJaxBackend:
        return cls(config, model.config, runtime, tokenizer, model_dir)

    @classmethod
    def resolve_settings(cls, config: TrainerConfig, model: Qwen2Config, runtime: Runtime) -> TrainerConfig:
        return settings.resolve_settings(config, model, runtime)

    @classmethod
    def weight_bytes_per_device(cls, config: TrainerConfig, model: Qwen2Config) -> int:
        return settings.engine_weight_bytes(config, model)

    def generate(self, prompt_ids_NxP, prompt_mask_NxP, sampling: SamplingSettings, seed: int) -> RolloutOutput:
        prompts = [row[mask.astype(bool)].tolist() for row, mask in zip(prompt_ids_NxP, prompt_mask_NxP, strict=True)]
        params = {"max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                  "top_p": sampling.top_p, "top_k": sampling.top_k, "stop_token_ids": self.stop_ids,
                  "ignore_eos": sampling.ignore_eos}
        results = self.engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
        return self._pack(results, sampling.max_new_tokens)

    def _pack(self, results: list[dict], width: int) -> RolloutOutput:
        """Ragged engine outputs into the trainer's fixed [rows, max_new_tokens] arrays."""
        n = len(results)
        ids = np.full((n, width), self.pad_id, np.int32)
        mask = np.zeros((n, width), np.int32)
        logps = np.zeros((n, width), np.float32)
        for row, result in enumerate(results):
            # output_ids drops a matched stop token; the log-prob triples (logprob, id, text) keep it,
            # and the trainer must see it (the policy learns when to stop).
            triples = result["meta_info"]["output_token_logprobs"][:width]
            ids[row, :len(triples)] = [token for _, token, _ in triples]
            mask[row, :len(triples)] = 1
            logps[row, :len(triples)] = [logprob for logprob, _, _ in triples]
        return RolloutOutput(ids, mask, logps)

    def push_weights(self, params) -> None:
        from flax import nnx

        with timed(self._seconds, "time/engine_weight_push_s"):
            if self._convert is None:
                self._convert = self._make_converter(params)
            leaves = list(self.runner.model_state_leaves)
            for index, value in zip(self._target_indices, self._convert(params), strict=True):
                leaves[index] = value
            jax.block_until_ready(leaves)
            self.runner.model_state_leaves = leaves  # what the engine's jitted forward reads on every call
            nnx.update(self.runner.model, jax.tree_util.tree_unflatten(self.runner._model_state_def, leaves))
            if self._flush_on_push:
                self._flush_prefix_cache()

    def _flush_prefix_cache(self) -> None:
        """Drop the radix cache's keys and values: they were computed under the weights just replaced,
        and the next rollout would reuse them for every prompt it has seen (its group's, or a repeat)."""
        flushed = self.engine.flush_cache()
        if not flushed.success:
            raise RuntimeError(f"weight push: sglang-jax refused to flush its prefix cache: {flushed.error_msg}")

    def _make_converter(self, params):
        """One jitted function from trainer params to the engine's leaves (layout, dtype, sharding), so a
        push is a single dispatch. Leaves are matched by path through the treedef the engine's forward
        was compiled with."""
        mapped = jax.eval_shape(self._engine_tensors, params)
        leaves = self.runner.model_state_leaves
        targets = leaves_to_replace(jax.tree_util.tree_unflatten(self.runner._model_state_def, leaves), mapped)
        self._target_indices = [i for i, _ in targets]
        dtypes = [leaves[i].dtype for i in self._target_indices]

        def convert(p):
            tensors = self._engine_tensors(p)
            return [tensors[path].astype(dtype) for (_, path), dtype in zip(targets, dtypes, strict=True)]

        engine_shardings = [leaves[i].sharding for i in self._target_indices]
        if jax.process_count() == 1:
            return jax.jit(convert, out_shardings=engine_shardings)
        pod_mesh = pod_engine_mesh(self.runner.mesh)
        to_pod = jax.jit(convert, out_shardings=[NamedSharding(pod_mesh, e.spec) for e in engine_shardings])
        return lambda p: [as_engine_array(a, e) for a, e in zip(to_pod(p), engine_shardings, strict=True)]

    def _engine_tensors(self, params) -> dict:
        return engine_tensors(params, self.model_config, self.our_heads, self.engine_heads)

    def timings(self) -> dict[str, float]:
        seconds, self._seconds = self._seconds, {"time/engine_weight_push_s": 0.0}
        return seconds

    def shutdown(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            patches.shutdown(engine)

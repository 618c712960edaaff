"""The engine's settings: every auto / 0 value of `rollout.sglang` sized from the run, impossible sizes
refused before the engine starts, and the keyword arguments the engine is started with.

Sizing: the KV pool defaults to about half of the memory in sglang-jax, so it is always capped at what
the run needs (running requests x context length); the context is the prompt bucket plus the new
tokens; running requests and the prefill chunk follow the rows per process, except with the native
attention backend (the CPU's): see `NATIVE_RUNNING_REQUESTS`. The overlap scheduler
stays off unless rollout.sglang.overlap_schedule is set: with it about half of the engine starts on CPU
return log-probs (and samples) that disagree with the weights by up to 0.5 nats.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from trainer.config import ConfigError, SglangSection, TrainerConfig
from trainer.model.qwen2 import Qwen2Config
from trainer.rollout.sglang_jax.patches_0_1_0rc0 import MIN_DECODE_BATCH, VERSION
from trainer.rollout.sglang_jax.pod import local_device_indexes
from trainer.runtime import Runtime, free_device_bytes

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "bf16": 2}
_MAX_CHUNKED_PREFILL = 16384
# The native attention backend (the only one on CPU) re-lays out the whole KV pool in every layer of every
# forward and attends each token to every running request's tokens under a block-diagonal mask, so a
# forward costs about running requests x pool size, and a prefill chunk's cost grows with its square.
# Its defaults therefore run a few requests at a time, in a pool sized for them, and prefill one prompt
# per chunk. On the peer workload (16 rows, 128 + 64 tokens; bench/peers/sglang_profile.py, one run) that
# took a rollout from 5.7x to 3.1x the built-in sampler's time; 2 running requests were slower (7.3x, the
# per-forward overhead wins). Against the faster built-in sampler of issue 12's second pass these defaults
# are still the closest measured (8.5x; 4 running requests alone 8.8x, 2 running requests 11.7x). The fa
# backend (TPU) reads only each request's own pages and keeps the rows-per-process defaults.
NATIVE_RUNNING_REQUESTS = 4


def kv_bytes_per_token(model: Qwen2Config, kv_dtype: str) -> int:
    """KV pool bytes per token, as sglang-jax sizes it (head_dim rounded up to 128)."""
    head_dim = (model.head_dim + 127) // 128 * 128
    return model.num_hidden_layers * 2 * model.num_key_value_heads * head_dim * _DTYPE_BYTES[kv_dtype]


def engine_weight_bytes(config: TrainerConfig, model: Qwen2Config) -> int:
    """Bytes per device the engine's own copy of the weights takes beside the trainer's."""
    s = config.rollout.sglang
    dtype = config.model.dtype if s.dtype == "auto" else s.dtype
    return model.num_params() * jnp.dtype(dtype).itemsize // (s.tp_size or jax.local_device_count())


def resolve_settings(config: TrainerConfig, model: Qwen2Config, runtime: Runtime) -> TrainerConfig:
    """The config with its `rollout.sglang` section sized for this run."""
    return config.model_copy(update={"rollout": config.rollout.model_copy(
        update={"sglang": resolve_engine_section(config, model, runtime)})})


def resolve_engine_section(config: TrainerConfig, model: Qwen2Config, runtime: Runtime) -> SglangSection:
    """Engine settings with every auto / 0 value sized from this run; impossible sizes fail here."""
    s, rollout = config.rollout.sglang, config.rollout
    rows = config.rows // runtime.process_count
    native = _attention_backend(s, runtime.platform) == "native"
    context, running, total = _sizes(s, rollout, rows, native)
    dtype, kv_dtype = _dtypes(s, config.model.dtype)
    tp = _tp_size(s, runtime)
    _check_pool_fits(total, kv_bytes_per_token(model, kv_dtype) * total // tp, runtime.platform)
    return s.model_copy(update=dict(
        context_length=context, max_running_requests=running, max_total_tokens=total, dtype=dtype,
        kv_cache_dtype=kv_dtype, tp_size=tp,
        # The pool is capped by max_total_tokens; the fraction only has to leave that much room.
        mem_fraction_static=s.mem_fraction_static or 0.9,
        chunked_prefill_size=s.chunked_prefill_size or min((1 if native else rows) * rollout.prompt_length,
                                                           _MAX_CHUNKED_PREFILL),
        attention_backend=_attention_backend(s, runtime.platform),
        precompile_bs_paddings=s.precompile_bs_paddings or _powers_of_two(MIN_DECODE_BATCH, running)))


def _sizes(s: SglangSection, rollout, rows: int, native: bool) -> tuple[int, int, int]:
    """Context length, running requests and KV pool tokens."""
    # The engine rejects a request whose prompt + max_new_tokens reaches context_length.
    needed_context = rollout.prompt_length + rollout.max_new_tokens + 1
    context = s.context_length or needed_context
    if context < needed_context:
        raise ConfigError(f"rollout.sglang.context_length: expected at least rollout.prompt_length + "
                          f"rollout.max_new_tokens + 1 = {needed_context}, received {context}")
    running = s.max_running_requests or max(min(rows, NATIVE_RUNNING_REQUESTS) if native else rows, MIN_DECODE_BATCH)
    if running < MIN_DECODE_BATCH:
        raise ConfigError(f"rollout.sglang.max_running_requests: expected at least {MIN_DECODE_BATCH} (sglang-jax "
                          f"{VERSION} fails to decode a batch of one), received {running}")
    total = s.max_total_tokens or min(rows, running) * (context + s.page_size)
    if total < context:
        raise ConfigError(f"rollout.sglang.max_total_tokens: expected at least one request's context of "
                          f"{context} tokens, received {total}")
    return context, running, total


def _dtypes(s: SglangSection, model_dtype: str) -> tuple[str, str]:
    """The engine's dtype and its KV cache's, in sglang-jax's spelling (bf16)."""
    dtype = model_dtype if s.dtype == "auto" else s.dtype
    kv_dtype = ("bf16" if dtype == "bfloat16" else "float32") if s.kv_cache_dtype == "auto" else s.kv_cache_dtype
    if kv_dtype == "float32" and dtype != "float32":
        raise ConfigError(f"rollout.sglang.kv_cache_dtype: expected auto or bf16 with a {dtype} engine "
                          "(sglang-jax keeps the KV cache in the model dtype or bf16), received 'float32'")
    return dtype, kv_dtype


def _tp_size(s: SglangSection, runtime: Runtime) -> int:
    """One CPU device does on one host; on a TPU host, and on every host of a pod, the engine takes all of
    the host's devices (the pod's weight push lays the weights out over exactly those)."""
    single_cpu = runtime.platform == "cpu" and runtime.process_count == 1
    tp = s.tp_size or (1 if single_cpu else jax.local_device_count())
    if runtime.process_count > 1 and tp != jax.local_device_count():
        raise ConfigError(f"rollout.sglang.tp_size: expected each host's device count "
                          f"{jax.local_device_count()} (or 0 for it) on a pod, received {tp}")
    return tp


def _check_pool_fits(total: int, pool_bytes: int, platform: str) -> None:
    free = free_device_bytes(platform)
    if pool_bytes > free:
        raise ConfigError(f"rollout.sglang.max_total_tokens: expected a KV pool that fits the {free / 2**30:.2f} "
                          f"GiB free per device ({total} tokens need {pool_bytes / 2**30:.2f} GiB), received {total}")


def _attention_backend(s: SglangSection, platform: str) -> str:
    if s.attention_backend != "auto":
        return s.attention_backend
    return "native" if platform == "cpu" else "fa"


def _powers_of_two(first: int, limit: int) -> list[int]:
    """first, 2 first, 4 first, ... below limit, then limit: the batch sizes the engine precompiles."""
    sizes, size = [], first
    while size < limit:
        sizes.append(size)
        size *= 2
    return sizes + [limit]


def engine_kwargs(config: TrainerConfig, runtime: Runtime, model_dir: Path) -> dict:
    """sglang-jax Engine arguments from a resolved `rollout.sglang` section."""
    s = config.rollout.sglang
    return dict(
        model_path=str(model_dir), device=runtime.platform, dtype=s.dtype, tp_size=s.tp_size,
        # sglang-jax spells the KV dtype "auto" (the model dtype) or "bf16".
        kv_cache_dtype="bf16" if s.kv_cache_dtype == "bf16" and s.dtype != "bfloat16" else "auto",
        attention_backend=s.attention_backend, mem_fraction_static=s.mem_fraction_static,
        max_total_tokens=s.max_total_tokens, context_length=s.context_length,
        max_running_requests=s.max_running_requests, max_prefill_tokens=s.chunked_prefill_size,
        chunked_prefill_size=s.chunked_prefill_size, page_size=s.page_size,
        disable_precompile=not s.precompile, precompile_bs_paddings=s.precompile_bs_paddings,
        precompile_token_paddings=s.precompile_token_paddings or None,
        disable_radix_cache=s.disable_radix_cache, enable_single_process=True,
        disable_overlap_schedule=not s.overlap_schedule,
        random_seed=engine_seed(config.seed, runtime.process_index), log_level="error", skip_server_warmup=True,
        device_indexes=local_device_indexes(s.tp_size))


def engine_seed(seed: int, process_index: int) -> int:
    """Each host's engine samples with its own seed: engines seeded alike draw the same completions for
    the rows of a group that a pod splits over its hosts."""
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0] % 2**31)

"""The built-in JAX sampler's decoding, and the sampling settings every backend takes: prefill a
left-padded prompt bucket into a KV cache, then decode with fixed shapes in a `lax.while_loop` that
stops once every row has produced a stop token.

Log-probs are those of the temperature-scaled distribution before top-k / top-p truncation, the
same quantity the trainer computes (and sglang-jax returns); greedy rows use temperature 1.

A token is drawn by Gumbel-max (`jax.random.categorical`) or by inverse CDF (`rollout.sampling_method`):
the same distribution, different draws for one seed. Inverse CDF is a cumulative sum over the vocabulary
and a count, where Gumbel-max draws a Gumbel variate per vocabulary entry and takes an argmax; on the
CPU the count is the cheaper of the two (a whole decode step 0.85x, bench/peers/fast_paths.py).
Gumbel-max stays the default elsewhere: on a TPU its argmax is one cheap reduction while a cumulative
sum over a 150k vocabulary is a log-depth scan, and it is exact in the far tail, where a float32
cumulative sum cannot separate tokens whose probability is below about 1e-7 of the total.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from trainer.model.qwen2 import Qwen2ForCausalLM, prefill, unstack_layers


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_k: int = -1
    top_p: float = 1.0
    ignore_eos: bool = False  # stop tokens are ordinary tokens: every row gets max_new_tokens


def sampling_method(name: str, platform: str) -> str:
    """`rollout.sampling_method: auto`: inverse_cdf on the CPU, gumbel elsewhere (the module docstring says why)."""
    if name == "auto":
        return "inverse_cdf" if platform == "cpu" else "gumbel"
    return name


def truncate_logits(logits_NxV: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Set logits outside the top-k and outside the smallest top-p nucleus to -inf."""
    neg_inf = jnp.finfo(logits_NxV.dtype).min
    if top_k > 0:
        kth = jax.lax.top_k(logits_NxV, top_k)[0][:, -1:]
        logits_NxV = jnp.where(logits_NxV < kth, neg_inf, logits_NxV)
    if top_p >= 1.0:
        return logits_NxV  # no sort over the vocabulary in every decode step
    sorted_desc = jnp.sort(logits_NxV, axis=-1)[:, ::-1]
    probs_desc = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs_desc, axis=-1) - probs_desc
    kept = mass_before < top_p  # the first token is always kept
    threshold = jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_NxV < threshold, neg_inf, logits_NxV)


def inverse_cdf_draw(logits_NxV: jax.Array, rng) -> jax.Array:
    """One token per row from softmax(logits): the first index whose cumulative probability reaches a
    uniform draw u in (0, total], so a token of zero probability (truncated) is never drawn."""
    cdf_NxV = jnp.cumsum(jax.nn.softmax(logits_NxV, axis=-1), axis=-1)
    u_Nx1 = (1.0 - jax.random.uniform(rng, (logits_NxV.shape[0], 1))) * cdf_NxV[:, -1:]
    return jnp.minimum(jnp.sum(cdf_NxV < u_Nx1, axis=-1), logits_NxV.shape[-1] - 1)


def sample_next(logits_NxV, rng, temperature, top_p: float, top_k: int, inverse_cdf: bool = False):
    """Next tokens and their log-probs under the temperature-scaled, untruncated distribution."""
    greedy = temperature <= 0
    scaled = logits_NxV / jnp.where(greedy, 1.0, temperature)
    truncated = truncate_logits(scaled, top_k, top_p)
    if inverse_cdf:
        sampled = inverse_cdf_draw(truncated, rng)
    else:
        sampled = jax.random.categorical(rng, truncated, axis=-1)
    tokens = jnp.where(greedy, jnp.argmax(logits_NxV, axis=-1), sampled).astype(jnp.int32)
    logps = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens, logps


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k", "top_p", "stop_ids", "pad_id",
                                             "inverse_cdf", "prompt_group"))
def generate(model: Qwen2ForCausalLM, params, prompt_ids_NxP, prompt_mask_NxP, rng, temperature, *,
             max_new_tokens: int, top_k: int, top_p: float, stop_ids: tuple[int, ...], pad_id: int,
             inverse_cdf: bool = False, prompt_group: int = 1):
    """Completions [N, max_new_tokens] (pad after the stop token), their mask (stop token included)
    and per-token log-probs (0 where masked). Where every prompt_group consecutive rows share a prompt
    (trainer.sharding.shared_prompt_group) the prefill runs once per group and its cache is repeated."""
    n, p = prompt_ids_NxP.shape
    c = max_new_tokens
    if not model.scan_layers:
        params = unstack_layers(params)  # once, not in every decode step
    key_valid_NxS = jnp.concatenate([prompt_mask_NxP, jnp.ones((n, c), prompt_mask_NxP.dtype)], axis=1)
    logits, cache = prefill(model, params, prompt_ids_NxP[::prompt_group], prompt_mask_NxP[::prompt_group], c,
                            prompt_group)
    lengths_N = prompt_mask_NxP.sum(axis=1).astype(jnp.int32)
    stop_ids_arr = jnp.asarray(stop_ids, jnp.int32)

    def cond(state):
        t, _, _, _, _, _, done_N, _ = state
        return (t < c) & ~jnp.all(done_N)

    def body(state):
        t, cache, last_logits, ids, mask, logps, done_N, rng = state
        rng, step_rng = jax.random.split(rng)
        token_N, logp_N = sample_next(last_logits, step_rng, temperature, top_p, top_k, inverse_cdf)
        live_N = ~done_N
        ids = ids.at[:, t].set(jnp.where(live_N, token_N, pad_id))
        mask = mask.at[:, t].set(live_N.astype(jnp.int32))
        logps = logps.at[:, t].set(jnp.where(live_N, logp_N, 0.0))
        done_N = done_N | jnp.isin(token_N, stop_ids_arr)
        step_logits, cache = model.apply({"params": params}, token_N[:, None], (lengths_N + t)[:, None],
                                         key_valid_NxS, cache, p + t)
        return t + 1, cache, step_logits[:, 0], ids, mask, logps, done_N, rng

    state = (jnp.int32(0), cache, logits[:, 0], jnp.full((n, c), pad_id, jnp.int32), jnp.zeros((n, c), jnp.int32),
             jnp.zeros((n, c), jnp.float32), jnp.zeros((n,), bool), rng)
    _, _, _, ids, mask, logps, _, _ = jax.lax.while_loop(cond, body, state)
    return ids, mask, logps

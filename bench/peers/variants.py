"""Measurement-only re-implementations of this trainer's Qwen2 forward, update and decode loop, with the
layout switches issue 12's diagnosis compares (bench/peers/experiments.py). Nothing here is used by the
trainer: each switch is a candidate change, measured against the trainer's own code in one run, and
experiments.py checks that every variant computes the trainer's numbers (logits, log-probs) first.

Switches: layers unrolled in Python instead of `lax.scan`; fused QKV and gate-up kernels (one matmul
each); attention with heads before sequence and an additive mask; remat; logits of exactly the
completion positions; token log-probs through a one-hot select instead of a gather (whose backward is a
scatter into zeros); micro-batch count; and for decoding one heads-first KV cache per layer, a fixed
trip count, and inverse-CDF sampling (a cumulative sum and a count instead of Gumbel-max's argmax).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from trainer.losses import per_token_loss
from trainer.model.qwen2 import apply_rope, prompt_positions, rope_angles
from trainer.train_step import TrainState

NEG = jnp.finfo(jnp.float32).min


def rms(x, scale, eps):
    return scale * (x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps))


def fuse(params: dict) -> dict:
    """The trainer's params with q/k/v and gate/up kernels concatenated along their output axis."""
    layer = dict(params["layers"]["layer"])
    q, k, v = (layer.pop(name) for name in ("q_proj", "k_proj", "v_proj"))
    layer["qkv"] = {"kernel": jnp.concatenate([q["kernel"], k["kernel"], v["kernel"]], -1),
                    "bias": jnp.concatenate([q["bias"], k["bias"], v["bias"]], -1)}
    gate, up = layer.pop("gate_proj"), layer.pop("up_proj")
    layer["gate_up"] = {"kernel": jnp.concatenate([gate["kernel"], up["kernel"]], -1)}
    return {**params, "layers": {"layer": layer}}


def project_qkv(y, lp, cfg):
    q_width, kv_width = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    if "qkv" in lp:
        fused = y @ lp["qkv"]["kernel"] + lp["qkv"]["bias"]
        return fused[..., :q_width], fused[..., q_width:q_width + kv_width], fused[..., q_width + kv_width:]
    return tuple(y @ lp[n]["kernel"] + lp[n]["bias"] for n in ("q_proj", "k_proj", "v_proj"))


def mlp(y, lp, cfg):
    if "gate_up" in lp:
        fused = y @ lp["gate_up"]["kernel"]
        gate, up = fused[..., :cfg.intermediate_size], fused[..., cfg.intermediate_size:]
    else:
        gate, up = y @ lp["gate_proj"]["kernel"], y @ lp["up_proj"]["kernel"]
    return (jax.nn.silu(gate) * up) @ lp["down_proj"]["kernel"]


def attention(q, k, v, mask, heads_first: bool):
    """q [B,T,N,D], k/v [B,S,K,D]; mask boolean [B,T,S] (grouped, as the trainer) or additive (heads-first)."""
    b, t, n, d = q.shape
    kv_heads = k.shape[2]
    g = n // kv_heads
    if not heads_first:
        scores = jnp.einsum("btkgd,bskd->bkgts", q.reshape(b, t, kv_heads, g, d), k) * d ** -0.5
        probs = jax.nn.softmax(jnp.where(mask[:, None, None], scores, NEG), axis=-1)
        return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, n * d)
    return attention_heads_first(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)


def attention_heads_first(q, k_BxKxSxD, v_BxKxSxD, bias_BxTxS):
    b, t, n, d = q.shape
    kv_heads = k_BxKxSxD.shape[1]
    g = n // kv_heads
    qh = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, d)
    scores = jnp.einsum("bkmd,bksd->bkms", qh, k_BxKxSxD) * d ** -0.5
    scores = scores.reshape(b, kv_heads, g, t, -1) + bias_BxTxS[:, None, None]
    probs = jax.nn.softmax(scores, axis=-1).reshape(b, kv_heads, g * t, -1)
    out = jnp.einsum("bkms,bksd->bkmd", probs, v_BxKxSxD).reshape(b, kv_heads, g, t, d)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n * d)


def layer(x, lp, cfg, rope, mask, heads_first):
    b, t, _ = x.shape
    cos, sin = rope
    q, k, v = project_qkv(rms(x, lp["input_layernorm"]["scale"], cfg.rms_norm_eps), lp, cfg)
    q = apply_rope(q.reshape(b, t, cfg.num_attention_heads, cfg.head_dim), cos, sin)
    k = apply_rope(k.reshape(b, t, cfg.num_key_value_heads, cfg.head_dim), cos, sin)
    v = v.reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
    x = x + attention(q, k, v, mask, heads_first) @ lp["o_proj"]["kernel"]
    return x + mlp(rms(x, lp["post_attention_layernorm"]["scale"], cfg.rms_norm_eps), lp, cfg)


def forward(params, tokens, positions, key_valid, cfg, logits_last_n: int, *, unroll=False, heads_first=False,
            remat=False):
    """Logits of the last logits_last_n positions, as Qwen2ForCausalLM.apply without a cache."""
    embedding = params["embed_tokens"]["embedding"]
    t = tokens.shape[1]
    mask = (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])[None] & key_valid[:, None, :].astype(bool)
    if heads_first:
        mask = jnp.where(mask, 0.0, NEG)
    rope = rope_angles(positions, cfg.head_dim, cfg.rope_theta)
    step = functools.partial(layer, cfg=cfg, rope=rope, mask=mask, heads_first=heads_first)
    step = jax.checkpoint(step) if remat else step
    stacked = params["layers"]["layer"]
    x = embedding[tokens]
    if unroll:
        for i in range(cfg.num_hidden_layers):
            x = step(x, jax.tree.map(lambda a, i=i: a[i], stacked))
    else:
        x, _ = jax.lax.scan(lambda h, lp: (step(h, lp), None), x, stacked)
    return rms(x, params["norm"]["scale"], cfg.rms_norm_eps)[:, -logits_last_n:] @ embedding.T


def token_logps(logits, tokens, one_hot: bool):
    logp = jax.nn.log_softmax(logits, -1)
    if one_hot:
        picked = jnp.sum(jnp.where(jnp.arange(logits.shape[-1]) == tokens[..., None], logp, 0.0), -1)
    else:
        picked = jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    return picked, -jnp.sum(jnp.exp(logp) * logp, -1)


def model_inputs(batch):
    """Whole rows: tokens, positions counting real tokens, key mask (as trainer.train_step builds them)."""
    c = batch.completion_ids_NxC.shape[1]
    tokens = jnp.concatenate([batch.prompt_ids_NxP, batch.completion_ids_NxC], axis=1)
    lengths = batch.prompt_mask_NxP.sum(axis=1, keepdims=True).astype(jnp.int32)
    positions = jnp.concatenate([prompt_positions(batch.prompt_mask_NxP), lengths + jnp.arange(c)], axis=1)
    key_valid = jnp.concatenate([batch.prompt_mask_NxP, jnp.ones_like(batch.completion_ids_NxC)], axis=1)
    return tokens, positions, key_valid


def split_micro(x, num_micro: int):
    """[N, ...] -> [num_micro, N / num_micro, ...], rows num_micro apart (as the trainer splits them)."""
    return jnp.swapaxes(x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]), 0, 1)


def make_update(cfg, optimizer, train, rows: int, *, num_micro=1, exact_logits=False, one_hot=False,
                micro_scan=True, **forward_switches):
    """A jitted, donated GRPO update (beta 0, one iteration, loss_type grpo) with the given switches;
    micro_scan=False with one micro-batch calls the gradient directly instead of through a one-step scan."""

    def loss_fn(params, micro):
        tokens, positions, key_valid = model_inputs(micro)
        c = micro.completion_ids_NxC.shape[1]
        if exact_logits:  # the c positions that predict completion tokens, nothing to drop
            logits = forward(params, tokens[:, :-1], positions[:, :-1], key_valid[:, :-1], cfg, c, **forward_switches)
        else:  # as the trainer: c + 1 positions, the last one dropped
            logits = forward(params, tokens, positions, key_valid, cfg, c + 1, **forward_switches)[:, :-1]
        logps, entropy = token_logps(logits, micro.completion_ids_NxC, one_hot)
        per_token, _ = per_token_loss(logps, jax.lax.stop_gradient(logps), micro.advantages_N, micro.ref_logps_NxC,
                                      micro.rollout_logps_NxC, micro.completion_mask_NxC, train)
        mask = micro.loss_mask_NxC
        weights = mask / jnp.maximum(mask.sum(1, keepdims=True), 1.0) / rows  # loss_type grpo over the whole batch
        return jnp.sum(per_token * weights), jnp.sum(jax.lax.stop_gradient(entropy) * mask)

    def update(state, batch):
        def accumulate(carry, micro):
            (loss, entropy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, micro)
            return jax.tree.map(jnp.add, carry, (grads, loss, entropy)), None

        if micro_scan or num_micro > 1:
            init = (jax.tree.map(jnp.zeros_like, state.params), jnp.float32(0.0), jnp.float32(0.0))
            (grads, loss, entropy), _ = jax.lax.scan(accumulate, init,
                                                      jax.tree.map(lambda x: split_micro(x, num_micro), batch))
        else:
            (loss, entropy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, "entropy": entropy, "grad_norm": optax.global_norm(grads)}
        return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state), metrics

    return jax.jit(update, donate_argnums=(0,))


def sample(logits, key, inverse_cdf: bool):
    if not inverse_cdf:
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
    u = jax.random.uniform(key, (logits.shape[0], 1)) * cdf[:, -1:]
    return jnp.minimum(jnp.sum(cdf < u, axis=-1), logits.shape[-1] - 1).astype(jnp.int32)


def _decode_layer(x, lp, cfg, rope, caches, write_at, bias):
    b, t, _ = x.shape
    cos, sin = rope
    q, k, v = project_qkv(rms(x, lp["input_layernorm"]["scale"], cfg.rms_norm_eps), lp, cfg)
    q = apply_rope(q.reshape(b, t, cfg.num_attention_heads, cfg.head_dim), cos, sin)
    k = apply_rope(k.reshape(b, t, cfg.num_key_value_heads, cfg.head_dim), cos, sin).transpose(0, 2, 1, 3)
    v = v.reshape(b, t, cfg.num_key_value_heads, cfg.head_dim).transpose(0, 2, 1, 3)
    k_cache = jax.lax.dynamic_update_slice(caches[0], k.astype(caches[0].dtype), (0, 0, write_at, 0))
    v_cache = jax.lax.dynamic_update_slice(caches[1], v.astype(caches[1].dtype), (0, 0, write_at, 0))
    x = x + attention_heads_first(q, k_cache, v_cache, bias) @ lp["o_proj"]["kernel"]
    return x + mlp(rms(x, lp["post_attention_layernorm"]["scale"], cfg.rms_norm_eps), lp, cfg), (k_cache, v_cache)


@functools.partial(jax.jit, static_argnames=("cfg", "new_tokens", "inverse_cdf", "while_loop"))
def generate(params, prompt_ids, prompt_mask, key, *, cfg, new_tokens: int, inverse_cdf=False, while_loop=False):
    """Decode new_tokens for every row (no stop tokens) with unrolled layers and one heads-first cache
    [B, K, S, D] per layer; returns tokens and their log-probs at temperature 1."""
    n, p = prompt_ids.shape
    s = p + new_tokens
    stacked = params["layers"]["layer"]
    layers = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(cfg.num_hidden_layers)]
    embedding = params["embed_tokens"]["embedding"]
    key_valid = jnp.concatenate([prompt_mask, jnp.ones((n, new_tokens), prompt_mask.dtype)], 1).astype(bool)
    empty = jnp.zeros((n, cfg.num_key_value_heads, s, cfg.head_dim), embedding.dtype)
    rope = rope_angles(prompt_positions(prompt_mask), cfg.head_dim, cfg.rope_theta)
    bias = jnp.where((jnp.arange(s)[None, :] <= jnp.arange(p)[:, None])[None] & key_valid[:, None, :], 0.0, NEG)
    x, caches = embedding[prompt_ids], []
    for lp in layers:
        x, cache = _decode_layer(x, lp, cfg, rope, (empty, empty), 0, bias)
        caches.append(cache)
    logits = rms(x[:, -1], params["norm"]["scale"], cfg.rms_norm_eps) @ embedding.T
    lengths = prompt_mask.sum(1).astype(jnp.int32)

    def body(t, state):
        caches, logits, ids, logps, key = state
        key, step_key = jax.random.split(key)
        token = sample(logits, step_key, inverse_cdf)
        ids = ids.at[:, t].set(token)
        logps = logps.at[:, t].set(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), token[:, None], -1)[:, 0])
        rope = rope_angles((lengths + t)[:, None], cfg.head_dim, cfg.rope_theta)
        bias = jnp.where((jnp.arange(s) <= p + t)[None, None, :] & key_valid[:, None, :], 0.0, NEG)
        x, new_caches = embedding[token][:, None], []
        for lp, cache in zip(layers, caches, strict=True):
            x, cache = _decode_layer(x, lp, cfg, rope, cache, p + t, bias)
            new_caches.append(cache)
        return new_caches, rms(x[:, 0], params["norm"]["scale"], cfg.rms_norm_eps) @ embedding.T, ids, logps, key

    state = (caches, logits, jnp.zeros((n, new_tokens), jnp.int32), jnp.zeros((n, new_tokens), jnp.float32), key)
    if while_loop:
        state = jax.lax.while_loop(lambda st: st[0] < new_tokens, lambda st: (st[0] + 1, body(st[0], st[1])),
                                   (0, state))[1]
    else:
        state = jax.lax.fori_loop(0, new_tokens, body, state)
    return state[2], state[3]

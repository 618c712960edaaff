"""Qwen2 / Qwen2.5 decoder in Flax linen.

Layers are stacked with `nn.scan` (parameters carry a leading layer axis) so that compile time does
not grow with depth and the KV cache is one array per K and V. The same forward serves training
(no cache, causal mask over the whole row) and sampling (a preallocated cache written at
`write_index`). Rows are left-padded; `positions` count real tokens only, so a padded row computes
exactly what the unpadded sequence would.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> Qwen2Config:
        if hf.get("rope_scaling"):
            raise ValueError(f"config.json rope_scaling: expected null, received {hf['rope_scaling']!r}")
        heads = hf["num_attention_heads"]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads", heads),
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(hf.get("rope_theta", 1_000_000.0)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Qwen2Config:
        return cls.from_hf_dict(json.loads((Path(model_dir) / "config.json").read_text()))

    def num_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * (q + 2 * kv) + (q + 2 * kv) + q * h
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        head = 0 if self.tie_word_embeddings else h * self.vocab_size
        return self.vocab_size * h + self.num_hidden_layers * per_layer + h + head


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer: [layers, batch, cache_len, kv_heads, head_dim]."""

    k_LxBxSxKxD: jax.Array
    v_LxBxSxKxD: jax.Array

    @classmethod
    def zeros(cls, config: Qwen2Config, batch: int, length: int, dtype) -> KVCache:
        shape = (config.num_hidden_layers, batch, length, config.num_key_value_heads, config.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def prompt_positions(prompt_mask_NxP: jax.Array) -> jax.Array:
    """Positions counting real tokens only, so left padding does not shift RoPE."""
    return jnp.maximum(jnp.cumsum(prompt_mask_NxP, axis=1) - 1, 0).astype(jnp.int32)


def rope_angles(positions_BxT: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BxTxHalf = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
    angles_BxTxD = jnp.concatenate([angles_BxTxHalf, angles_BxTxHalf], axis=-1)
    return jnp.cos(angles_BxTxD), jnp.sin(angles_BxTxD)


def apply_rope(x_BxTxNxD: jax.Array, cos_BxTxD: jax.Array, sin_BxTxD: jax.Array) -> jax.Array:
    half = x_BxTxNxD.shape[-1] // 2
    x = x_BxTxNxD.astype(jnp.float32)
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxTxD[:, :, None, :] + rotated * sin_BxTxD[:, :, None, :]
    return out.astype(x_BxTxNxD.dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def _dense(features: int, use_bias: bool, dtype, param_dtype, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nn.initializers.normal(0.02), name=name)


def attention(q_BxTxNxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS) -> jax.Array:
    """Grouped-query attention with a boolean mask; softmax in float32."""
    b, t, n, d = q_BxTxNxD.shape
    kv_heads = k_BxSxKxD.shape[2]
    q = q_BxTxNxD.reshape(b, t, kv_heads, n // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k_BxSxKxD, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    scores = jnp.where(mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxD.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v_BxSxKxD)
    return out.reshape(b, t, n * d)


class DecoderLayer(nn.Module):
    config: Qwen2Config
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, hidden_BxTxH, cache, layer_index, rope, mask_BxTxS, write_index):
        c, dt, pdt = self.config, self.dtype, self.param_dtype
        b, t, _ = hidden_BxTxH.shape
        x = RMSNorm(c.rms_norm_eps, dt, pdt, name="input_layernorm")(hidden_BxTxH)
        q = _dense(c.num_attention_heads * c.head_dim, True, dt, pdt, "q_proj")(x)
        k = _dense(c.num_key_value_heads * c.head_dim, True, dt, pdt, "k_proj")(x)
        v = _dense(c.num_key_value_heads * c.head_dim, True, dt, pdt, "v_proj")(x)
        cos, sin = rope
        q = apply_rope(q.reshape(b, t, c.num_attention_heads, c.head_dim), cos, sin)
        k = apply_rope(k.reshape(b, t, c.num_key_value_heads, c.head_dim), cos, sin)
        v = v.reshape(b, t, c.num_key_value_heads, c.head_dim)
        if cache is not None:
            # Write this layer's new keys/values into the whole stacked cache in place, then read the
            # layer back; slicing per layer through scan outputs would copy the cache every step.
            k_all, v_all = cache
            start = (layer_index, 0, write_index, 0, 0)
            k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), start)
            v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), start)
            k = jax.lax.dynamic_index_in_dim(k_all, layer_index, keepdims=False)
            v = jax.lax.dynamic_index_in_dim(v_all, layer_index, keepdims=False)
            cache = (k_all, v_all)
        attn = attention(q, k.astype(dt), v.astype(dt), mask_BxTxS)
        hidden_BxTxH = hidden_BxTxH + _dense(c.hidden_size, False, dt, pdt, "o_proj")(attn)
        x = RMSNorm(c.rms_norm_eps, dt, pdt, name="post_attention_layernorm")(hidden_BxTxH)
        gate = _dense(c.intermediate_size, False, dt, pdt, "gate_proj")(x)
        up = _dense(c.intermediate_size, False, dt, pdt, "up_proj")(x)
        hidden_BxTxH = hidden_BxTxH + _dense(c.hidden_size, False, dt, pdt, "down_proj")(nn.silu(gate) * up)
        return hidden_BxTxH, cache


class _ScannedLayer(nn.Module):
    """Adapter giving `DecoderLayer` the carry -> (carry, outputs) signature `nn.scan` wants; the carry
    holds the hidden state, the stacked KV cache and the layer index."""

    config: Qwen2Config
    dtype: Any
    param_dtype: Any
    remat: bool

    @nn.compact
    def __call__(self, carry, rope, mask_BxTxS, write_index):
        hidden_BxTxH, cache, layer_index = carry
        layer_cls = nn.remat(DecoderLayer) if self.remat else DecoderLayer
        layer = layer_cls(self.config, self.dtype, self.param_dtype, name="layer")
        hidden_BxTxH, cache = layer(hidden_BxTxH, cache, layer_index, rope, mask_BxTxS, write_index)
        return (hidden_BxTxH, cache, layer_index + 1), None


class Qwen2ForCausalLM(nn.Module):
    config: Qwen2Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, tokens_BxT, positions_BxT, key_valid_BxS, cache: KVCache | None = None,
                 write_index: jax.Array | int = 0, logits_last_n: int | None = None):
        """Logits of the last `logits_last_n` positions (all when None) and the updated cache.

        key_valid_BxS marks real tokens among the keys: the row itself when there is no cache,
        the whole cache otherwise. Query i sits at buffer index write_index + i and sees keys at
        indices <= its own.
        """
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                         embedding_init=nn.initializers.normal(0.02), name="embed_tokens")
        hidden = embed(tokens_BxT)
        t, s = tokens_BxT.shape[1], key_valid_BxS.shape[1]
        query_index_T = write_index + jnp.arange(t)
        causal_TxS = jnp.arange(s)[None, :] <= query_index_T[:, None]
        mask_BxTxS = causal_TxS[None] & key_valid_BxS[:, None, :].astype(bool)
        rope = rope_angles(positions_BxT, c.head_dim, c.rope_theta)
        layers = nn.scan(
            _ScannedLayer, variable_axes={"params": 0}, split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=c.num_hidden_layers,
        )(c, self.dtype, self.param_dtype, self.remat, name="layers")
        stacked = None if cache is None else (cache.k_LxBxSxKxD, cache.v_LxBxSxKxD)
        (hidden, new_caches, _), _ = layers((hidden, stacked, jnp.int32(0)), rope, mask_BxTxS, write_index)
        hidden = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype, name="norm")(hidden)
        if logits_last_n is not None:
            hidden = hidden[:, -logits_last_n:]
        if c.tie_word_embeddings:
            logits = embed.attend(hidden)
        else:
            logits = _dense(c.vocab_size, False, self.dtype, self.param_dtype, "lm_head")(hidden)
        new_cache = None if cache is None else KVCache(*new_caches)
        return logits.astype(jnp.float32), new_cache

"""Qwen2 / Qwen2.5 decoder in Flax linen.

The layers' parameters are stacked (a leading layer axis, as `nn.scan` makes them), whichever way the
forward runs through them (`scan_layers`):
- scanned (`nn.scan`): compile time does not grow with depth and the KV cache is one stacked array per
  K and V. What a TPU wants: a 28-layer model compiles once per layer, not 28 times, and XLA's TPU
  backend runs the loop body without extra copies.
- unrolled (a Python loop over the layers, each with its own weights, made once from the stacked
  ones by `unstack_layers`): XLA sees the whole forward at once and every layer keeps its own KV cache,
  so a decode step writes and reads each layer's keys in place instead of slicing them out of the
  stacked cache; and the layers run in their own layout (`DecoderLayer` says which and why). On the
  2-core CPU, on the peer workload's 4-layer model, bench/peers/fast_paths.py measures a decode step
  and the update against the scan's. Compile time grows with depth, which a small model does not notice.
The same forward serves training (no cache, causal mask over the whole row) and sampling (a
preallocated cache written at `write_index`). Keys and values are kept heads first ([batch, kv heads,
positions, head_dim]), the layout the attention contractions read, so the cache is never transposed
(the keys-after-positions layout before it spent a third of a CPU decode step copying each layer's
keys out of the cache: bench/peers/op_profile.py rollout); unrolled layers keep their keys transposed
within that, [batch, kv heads, head_dim, positions] (`DecoderLayer`).
Rows are left-padded; `positions` count real tokens only, so a padded row computes exactly what the
unpadded sequence would.
"""

from __future__ import annotations

import dataclasses
import functools
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
    """Keys and values of every layer, heads first: one stacked array [layers, batch, kv_heads, cache_len,
    head_dim] each for scanned layers, or for unrolled layers (`per_layer`) a tuple of one array per layer,
    the values [batch, kv_heads, cache_len, head_dim] and the keys transposed, [batch, kv_heads, head_dim,
    cache_len] (`DecoderLayer` says why)."""

    keys: jax.Array | tuple[jax.Array, ...]
    values: jax.Array | tuple[jax.Array, ...]

    @classmethod
    def zeros(cls, config: Qwen2Config, batch: int, length: int, dtype, per_layer: bool = False) -> KVCache:
        shape = (batch, config.num_key_value_heads, length, config.head_dim)
        if per_layer:
            layers, keys_shape = config.num_hidden_layers, (batch, config.num_key_value_heads, config.head_dim, length)
            return cls(tuple(jnp.zeros(keys_shape, dtype) for _ in range(layers)),
                       tuple(jnp.zeros(shape, dtype) for _ in range(layers)))
        stacked = (config.num_hidden_layers, *shape)
        return cls(jnp.zeros(stacked, dtype), jnp.zeros(stacked, dtype))

    def with_room(self, positions: int) -> KVCache:
        """The cache with `positions` empty positions after those it holds."""
        def pad(x, axis):
            widths = [(0, 0)] * x.ndim
            widths[axis] = (0, positions)
            return jnp.pad(x, widths)

        if isinstance(self.keys, tuple):  # one cache per layer, keys transposed
            return KVCache(tuple(pad(k, -1) for k in self.keys), tuple(pad(v, -2) for v in self.values))
        return KVCache(pad(self.keys, -2), pad(self.values, -2))

    def repeat_rows(self, times: int) -> KVCache:
        """Each row's keys and values `times` times in a row."""
        if isinstance(self.keys, tuple):
            return KVCache(*(tuple(repeat_rows(x, times) for x in part) for part in (self.keys, self.values)))
        return KVCache(jnp.repeat(self.keys, times, axis=1), jnp.repeat(self.values, times, axis=1))  # [layers, rows, ...]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def repeat_rows(x: jax.Array, times: int) -> jax.Array:
    """x with each row (axis 0) `times` times in a row: [a, b] -> [a, a, b, b]. Its gradient sums each
    row's copies with elementwise adds: the reduction over the small copy axis that jnp.repeat's gradient
    makes ran at about 4 GB/s on the CPU, a twelfth of the update's time (bench/peers/op_profile.py update)."""
    return jnp.repeat(x, times, axis=0)


def _repeat_rows_forward(x, times):
    return repeat_rows(x, times), None


def _repeat_rows_backward(times, _, cotangent):
    copies = cotangent.reshape(cotangent.shape[0] // times, times, *cotangent.shape[1:])
    return (functools.reduce(jnp.add, [copies[:, i] for i in range(times)]),)


repeat_rows.defvjp(_repeat_rows_forward, _repeat_rows_backward)


def prefill(model: Qwen2ForCausalLM, params, prompt_ids_GxP, prompt_mask_GxP, new_tokens: int, rows_per_prompt: int = 1):
    """The last prompt position's logits [G x rows_per_prompt, 1, vocab] and a KV cache holding the
    prompts, each for rows_per_prompt consecutive rows, with room for new_tokens after them. The prompts
    fill a cache of their own length, which then grows: their attention does not run over the positions
    no token has reached yet (a third of a 128-token prompt's keys with 64 new tokens)."""
    g, p = prompt_ids_GxP.shape
    cache = KVCache.zeros(model.config, g, p, model.dtype, per_layer=not model.scan_layers)
    logits, cache = model.apply({"params": params}, prompt_ids_GxP, prompt_positions(prompt_mask_GxP), prompt_mask_GxP,
                                cache, 0, logits_last_n=1)
    if rows_per_prompt > 1:
        logits, cache = repeat_rows(logits, rows_per_prompt), cache.repeat_rows(rows_per_prompt)
    return logits, cache.with_room(new_tokens)


def prompt_positions(prompt_mask_NxP: jax.Array) -> jax.Array:
    """Positions counting real tokens only, so left padding does not shift RoPE."""
    return jnp.maximum(jnp.cumsum(prompt_mask_NxP, axis=1) - 1, 0).astype(jnp.int32)


PER_LAYER = "per_layer"
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def unstack_layers(params):
    """The parameters as unrolled layers run them (`DecoderLayer.unrolled`): the stacked layers split into
    one tree per layer (under "per_layer", keyed "0", "1", ...) with the q/k/v and gate/up kernels joined
    along their output axis. The stored layout (checkpoints, the weight loader, the sglang-jax push) stays
    stacked and separate; this is made once where a loop runs the model many times (the decode loop, the
    micro-batch loop): slicing each layer out inside the loop copied every weight on every iteration (a
    sixth of a CPU rollout by bench/peers/op_profile.py rollout), and the gradient of every slice was
    padded back to the stacked shape and summed in every micro-batch. `stack_layers` is the inverse."""
    stacked = params["layers"]["layer"]
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    per_layer = {str(i): _fuse_layer(jax.tree.map(lambda a, i=i: a[i], stacked)) for i in range(num_layers)}
    return {**{name: value for name, value in params.items() if name != "layers"}, PER_LAYER: per_layer}


def stack_layers(params):
    """The inverse of `unstack_layers`, for gradients taken with respect to the per-layer trees."""
    per_layer = params[PER_LAYER]
    trees = [_split_layer(per_layer[str(i)]) for i in range(len(per_layer))]
    stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *trees)
    return {**{name: value for name, value in params.items() if name != PER_LAYER}, "layers": {"layer": stacked}}


def _fuse_layer(layer: dict) -> dict:
    fused = {name: value for name, value in layer.items() if not any(name in parts for parts in _FUSED.values())}
    for name, parts in _FUSED.items():
        fused[name] = {leaf: jnp.concatenate([layer[part][leaf] for part in parts], axis=-1) for leaf in layer[parts[0]]}
    return fused


def _split_layer(layer: dict) -> dict:
    split = {name: value for name, value in layer.items() if name not in _FUSED}
    q_width = layer["o_proj"]["kernel"].shape[0]  # o_proj maps the query heads back: its input is q's width
    kv_width = (layer["qkv_proj"]["kernel"].shape[-1] - q_width) // 2
    bounds = {"qkv_proj": [q_width, q_width + kv_width], "gate_up_proj": [layer["gate_up_proj"]["kernel"].shape[-1] // 2]}
    for name, parts in _FUSED.items():
        for leaf, value in layer[name].items():
            for part, piece in zip(parts, jnp.split(value, bounds[name], axis=-1), strict=True):
                split.setdefault(part, {})[leaf] = piece
    return split


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


def attention(q_BxTxNxD, keys, v_BxKxSxD, mask_BxTxS, keys_transposed: bool = False) -> jax.Array:
    """Grouped-query attention with a boolean mask; softmax in float32.

    The queries of one KV head's group are laid out as the rows of one matrix ([batch, kv heads,
    group x positions, head_dim]), so each contraction is one plain matmul per (row, KV head) with the
    keys and values in the cache's own layout. The same contractions written with the group and the
    positions as separate axes ("btkgd,bksd->bkgts") made XLA's CPU backend transpose the values and
    the output around every product: on the CPU this spelling's attention takes 0.17x the time of that
    one in decoding and 0.68x in a training forward and backward (bench/peers/attention_layouts.py).
    On a TPU, XLA's layout assignment should reach the same batched matmul from either spelling, so the
    one spelling serves every platform (reasoned, not measured: no TPU here). keys are [batch, kv heads,
    positions, head_dim], or with `keys_transposed` [batch, kv heads, head_dim, positions]."""
    b, t, n, d = q_BxTxNxD.shape
    kv_heads = v_BxKxSxD.shape[1]
    g = n // kv_heads
    q_BxKxGTxD = q_BxTxNxD.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, d)
    keys_spec = "bkds" if keys_transposed else "bksd"
    scores = jnp.einsum(f"bkqd,{keys_spec}->bkqs", q_BxKxGTxD, keys, preferred_element_type=jnp.float32)
    scores_BxKxGxTxS = scores.reshape(b, kv_heads, g, t, -1) * (d ** -0.5)
    scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(v_BxKxSxD.dtype).reshape(b, kv_heads, g * t, -1)
    out_BxKxGxTxD = jnp.einsum("bkqs,bksd->bkqd", probs, v_BxKxSxD).reshape(b, kv_heads, g, t, d)
    return out_BxKxGxTxD.transpose(0, 3, 1, 2, 4).reshape(b, t, n * d)


def write_kv(cache, k_new, v_BxKxTxD, layer_index, write_index):
    """The cache with this layer's new keys and values written at write_index, and the layer's keys and
    values to attend to. A stacked cache is written in place and its layer read back (slicing per layer
    through scan outputs would copy the cache every step); a per-layer cache is this layer's alone. k_new
    is [batch, kv heads, T, head_dim], or for a per-layer cache (keys transposed) [batch, kv heads,
    head_dim, T]."""
    k_all, v_all = cache
    if k_all.ndim == 4:  # one layer's cache, keys transposed
        k_all = jax.lax.dynamic_update_slice(k_all, k_new.astype(k_all.dtype), (0, 0, 0, write_index))
        v_all = jax.lax.dynamic_update_slice(v_all, v_BxKxTxD.astype(v_all.dtype), (0, 0, write_index, 0))
        return (k_all, v_all), k_all, v_all
    start = (layer_index, 0, 0, write_index, 0)
    k_all = jax.lax.dynamic_update_slice(k_all, k_new[None].astype(k_all.dtype), start)
    v_all = jax.lax.dynamic_update_slice(v_all, v_BxKxTxD[None].astype(v_all.dtype), start)
    k = jax.lax.dynamic_index_in_dim(k_all, layer_index, keepdims=False)
    v = jax.lax.dynamic_index_in_dim(v_all, layer_index, keepdims=False)
    return (k_all, v_all), k, v


class DecoderLayer(nn.Module):
    """One decoder layer, in one of two parameter and cache layouts (`unrolled`):
    - scanned layers (what a TPU runs): separate q/k/v and gate/up kernels, each a tensor the fsdp and tp
      shardings name, and keys after positions ([batch, kv heads, positions, head_dim]), so that a TPU
      decode step writes its keys along the sublanes rather than as one lane of every 128-wide tile
      (reasoned from the TPU's tiling, not measured: no TPU here);
    - unrolled layers (the CPU's choice), given per-layer parameters by `unstack_layers`: one fused q|k|v
      kernel and one gate|up kernel, so the input is read once and its gradient is one matmul instead of
      three (two) and their sum; and the keys transposed, [batch, kv heads, head_dim, positions], so the
      query-key product reads them as a plain matmul's right-hand side. On the CPU a decode step's
      attention takes 0.5x the time it takes with keys after positions, a training pass about the same
      (bench/peers/attention_layouts.py).
    Both compute the same function of the same parameters (tests/trainer/test_trainer_fast_paths.py)."""

    config: Qwen2Config
    dtype: Any
    param_dtype: Any
    unrolled: bool = False

    @nn.compact
    def __call__(self, hidden_BxTxH, cache, layer_index, rope, mask_BxTxS, write_index):
        c, dt, pdt = self.config, self.dtype, self.param_dtype
        b, t, _ = hidden_BxTxH.shape
        q_width, kv_width = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        x = RMSNorm(c.rms_norm_eps, dt, pdt, name="input_layernorm")(hidden_BxTxH)
        if self.unrolled:
            qkv = _dense(q_width + 2 * kv_width, True, dt, pdt, "qkv_proj")(x)
            q, k, v = jnp.split(qkv, [q_width, q_width + kv_width], axis=-1)
        else:
            q = _dense(q_width, True, dt, pdt, "q_proj")(x)
            k = _dense(kv_width, True, dt, pdt, "k_proj")(x)
            v = _dense(kv_width, True, dt, pdt, "v_proj")(x)
        cos, sin = rope
        q = apply_rope(q.reshape(b, t, c.num_attention_heads, c.head_dim), cos, sin)
        k = apply_rope(k.reshape(b, t, c.num_key_value_heads, c.head_dim), cos, sin)
        k = k.transpose(0, 2, 3, 1) if self.unrolled else k.transpose(0, 2, 1, 3)
        v = v.reshape(b, t, c.num_key_value_heads, c.head_dim).transpose(0, 2, 1, 3)
        if cache is not None:
            cache, k, v = write_kv(cache, k, v, layer_index, write_index)
        attn = attention(q, k.astype(dt), v.astype(dt), mask_BxTxS, keys_transposed=self.unrolled)
        hidden_BxTxH = hidden_BxTxH + _dense(c.hidden_size, False, dt, pdt, "o_proj")(attn)
        x = RMSNorm(c.rms_norm_eps, dt, pdt, name="post_attention_layernorm")(hidden_BxTxH)
        if self.unrolled:
            gate, up = jnp.split(_dense(2 * c.intermediate_size, False, dt, pdt, "gate_up_proj")(x), 2, axis=-1)
        else:
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
    scan_layers: bool = True  # False: a Python loop over the layers (the module docstring says when)

    @nn.compact
    def __call__(self, tokens_BxT, positions_BxT, key_valid_BxS, cache: KVCache | None = None,
                 write_index: jax.Array | int = 0, logits_last_n: int | None = None, logits_skip_last: int = 0):
        """Logits of `logits_last_n` positions (all when None) ending `logits_skip_last` before the last
        one, and the updated cache.

        key_valid_BxS marks real tokens among the keys: the row itself when there is no cache,
        the whole cache otherwise. Query i sits at buffer index write_index + i and sees keys at
        indices <= its own. The hidden states are cut to the wanted positions before the vocabulary
        projection, so no logit is computed to be thrown away.
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
        if self.scan_layers or self.is_initializing():  # init makes the stacked parameters either way
            hidden, new_cache = self._scanned(hidden, cache, rope, mask_BxTxS, write_index)
        else:
            hidden, new_cache = self._unrolled(hidden, cache, rope, mask_BxTxS, write_index)
        hidden = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype, name="norm")(hidden)
        if logits_last_n is not None:
            end = hidden.shape[1] - logits_skip_last
            hidden = hidden[:, end - logits_last_n:end]
        if c.tie_word_embeddings:
            logits = embed.attend(hidden)
        else:
            logits = _dense(c.vocab_size, False, self.dtype, self.param_dtype, "lm_head")(hidden)
        return logits.astype(jnp.float32), new_cache

    def _scanned(self, hidden, cache, rope, mask_BxTxS, write_index):
        layers = nn.scan(
            _ScannedLayer, variable_axes={"params": 0}, split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=self.config.num_hidden_layers,
        )(self.config, self.dtype, self.param_dtype, self.remat, name="layers")
        stacked = None if cache is None else (cache.keys, cache.values)
        (hidden, new_caches, _), _ = layers((hidden, stacked, jnp.int32(0)), rope, mask_BxTxS, write_index)
        return hidden, None if cache is None else KVCache(*new_caches)

    def _unrolled(self, hidden, cache, rope, mask_BxTxS, write_index):
        """The layers one after another, each applying `DecoderLayer` in the unrolled layout (its own
        weights, fused kernels, keys transposed in its own cache): the same function of the same
        parameters as the scan. Parameters given in the stored layout are brought to the unrolled one here
        (`unstack_layers`); a loop that runs the model many times passes them already brought."""
        params = self.variables["params"]
        per_layer = params[PER_LAYER] if PER_LAYER in params else unstack_layers(params)[PER_LAYER]
        layer_params = [per_layer[str(i)] for i in range(self.config.num_hidden_layers)]
        layer = DecoderLayer(self.config, self.dtype, self.param_dtype, unrolled=True,
                             parent=None)  # applied, not a child

        def run(layer_params, hidden, layer_cache, index):
            return layer.apply({"params": layer_params}, hidden, layer_cache, index, rope, mask_BxTxS, write_index)

        run = jax.checkpoint(run, static_argnums=(3,)) if self.remat else run
        keys, values = [], []
        for index in range(self.config.num_hidden_layers):
            layer_cache = None if cache is None else (cache.keys[index], cache.values[index])
            hidden, layer_cache = run(layer_params[index], hidden, layer_cache, index)
            if layer_cache is not None:
                keys.append(layer_cache[0])
                values.append(layer_cache[1])
        return hidden, None if cache is None else KVCache(tuple(keys), tuple(values))

"""The trainer's parameter tree in the engine's layout, as pure functions: no engine is needed to run them.

sglang-jax keeps a kernel as [in, out] like the trainer, but its lm_head as [vocab, hidden], and it may
pad head_dim (up to a multiple of 128) and repeat KV heads it replicates over tensor-parallel devices;
`match_heads` does both along the axis that holds the heads. Engine tensors are named by their path in
the engine's nnx state, '/'-joined (`model/layers/0/self_attn/q_proj/weight`), as `jax.tree_util.keystr`
writes a pytree path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from trainer.model.qwen2 import Qwen2Config

# Flax leaf under params["layers"]["layer"] -> engine path inside model/layers/<i>, and which axis holds
# attention heads (the engine may pad head_dim or repeat KV heads along it).
_LAYER_LEAVES = (
    (("input_layernorm", "scale"), "input_layernorm/scale", None),
    (("post_attention_layernorm", "scale"), "post_attention_layernorm/scale", None),
    (("q_proj", "kernel"), "self_attn/q_proj/weight", ("q", -1)),
    (("q_proj", "bias"), "self_attn/q_proj/bias", ("q", -1)),
    (("k_proj", "kernel"), "self_attn/k_proj/weight", ("kv", -1)),
    (("k_proj", "bias"), "self_attn/k_proj/bias", ("kv", -1)),
    (("v_proj", "kernel"), "self_attn/v_proj/weight", ("kv", -1)),
    (("v_proj", "bias"), "self_attn/v_proj/bias", ("kv", -1)),
    (("o_proj", "kernel"), "self_attn/o_proj/weight", ("q", 0)),
    (("gate_proj", "kernel"), "mlp/gate_proj/weight", None),
    (("up_proj", "kernel"), "mlp/up_proj/weight", None),
    (("down_proj", "kernel"), "mlp/down_proj/weight", None),
)


@dataclasses.dataclass(frozen=True)
class HeadLayout:
    heads: int
    kv_heads: int
    head_dim: int


def match_heads(value, axis: int, ours: HeadLayout, engine: HeadLayout, kind: str):
    """Zero-pad each head from our head_dim to the engine's and repeat KV heads the engine replicates."""
    heads, engine_heads = (ours.heads, engine.heads) if kind == "q" else (ours.kv_heads, engine.kv_heads)
    if (heads, ours.head_dim) == (engine_heads, engine.head_dim):
        return value
    if engine_heads % heads or engine.head_dim < ours.head_dim:
        raise ValueError(f"cannot map {heads} heads x {ours.head_dim} onto the engine's "
                         f"{engine_heads} x {engine.head_dim}")
    axis = axis % value.ndim
    split = value.reshape(value.shape[:axis] + (heads, ours.head_dim) + value.shape[axis + 1:])
    pad = [(0, 0)] * split.ndim
    pad[axis + 1] = (0, engine.head_dim - ours.head_dim)
    split = jnp.repeat(jnp.pad(split, pad), engine_heads // heads, axis=axis)
    return split.reshape(value.shape[:axis] + (engine_heads * engine.head_dim,) + value.shape[axis + 1:])


def engine_tensors(params: dict, config: Qwen2Config, ours: HeadLayout, engine: HeadLayout) -> dict[str, jax.Array]:
    """Engine state path -> array in the engine's layout."""
    tensors = {"model/embed_tokens/embedding": params["embed_tokens"]["embedding"],
               "model/norm/scale": params["norm"]["scale"]}
    if not config.tie_word_embeddings:
        tensors["lm_head/embedding"] = params["lm_head"]["kernel"].T  # the engine keeps [vocab, hidden]
    layer = params["layers"]["layer"]
    for i in range(config.num_hidden_layers):
        for (module, leaf), engine_path, heads in _LAYER_LEAVES:
            value = layer[module][leaf][i]
            if heads is not None:
                value = match_heads(value, heads[1], ours, engine, heads[0])
            tensors[f"model/layers/{i}/{engine_path}"] = value
    return tensors


def state_path(path) -> str:
    """'model/layers/0/mlp/...' from a pytree path of the engine's nnx state, without a Param's `/value`."""
    return jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")


def leaves_to_replace(state, tensor_paths) -> list[tuple[int, str]]:
    """(index among the state's flattened leaves, path) of every leaf a tensor of tensor_paths replaces, in
    leaf order; every path must name a leaf."""
    targets = [(i, state_path(path)) for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0])]
    targets = [(i, path) for i, path in targets if path in tensor_paths]
    if len(targets) != len(tensor_paths):
        raise RuntimeError(f"weight push: {len(targets)} of {len(tensor_paths)} tensors found in the engine's state")
    return targets

"""Hugging Face safetensors <-> the Flax parameter tree of `Qwen2ForCausalLM`.

Hugging Face stores linear weights as [out, in] and one tensor per layer; the Flax tree keeps
kernels as [in, out] stacked over a leading layer axis (see `nn.scan` in qwen2.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from trainer.model.qwen2 import Qwen2Config

# (Hugging Face name inside model.layers.{i}., Flax leaf under params["layers"]["layer"], transpose)
_LAYER_TENSORS = (
    ("input_layernorm.weight", ("input_layernorm", "scale"), False),
    ("post_attention_layernorm.weight", ("post_attention_layernorm", "scale"), False),
    ("self_attn.q_proj.weight", ("q_proj", "kernel"), True),
    ("self_attn.q_proj.bias", ("q_proj", "bias"), False),
    ("self_attn.k_proj.weight", ("k_proj", "kernel"), True),
    ("self_attn.k_proj.bias", ("k_proj", "bias"), False),
    ("self_attn.v_proj.weight", ("v_proj", "kernel"), True),
    ("self_attn.v_proj.bias", ("v_proj", "bias"), False),
    ("self_attn.o_proj.weight", ("o_proj", "kernel"), True),
    ("mlp.gate_proj.weight", ("gate_proj", "kernel"), True),
    ("mlp.up_proj.weight", ("up_proj", "kernel"), True),
    ("mlp.down_proj.weight", ("down_proj", "kernel"), True),
)


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The weight files of a folder: the shards listed by the index, or the single file."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in shards]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def read_hf_tensors(model_dir: str | Path) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def params_from_hf(tensors: dict[str, np.ndarray], config: Qwen2Config, dtype) -> dict:
    """The Flax parameter tree (numpy leaves of `dtype`) from Hugging Face tensors."""

    def take(name: str, transpose: bool) -> np.ndarray:
        if name not in tensors:
            raise KeyError(f"weights: tensor {name!r} missing from the safetensors files")
        array = tensors[name]
        return np.asarray(array.T if transpose else array, dtype=dtype)

    layer: dict[str, dict[str, np.ndarray]] = {}
    for hf_suffix, (module, leaf), transpose in _LAYER_TENSORS:
        stacked = [take(f"model.layers.{i}.{hf_suffix}", transpose) for i in range(config.num_hidden_layers)]
        layer.setdefault(module, {})[leaf] = np.stack(stacked)
    params = {
        "embed_tokens": {"embedding": take("model.embed_tokens.weight", False)},
        "layers": {"layer": layer},
        "norm": {"scale": take("model.norm.weight", False)},
    }
    if not config.tie_word_embeddings:
        params["lm_head"] = {"kernel": take("lm_head.weight", True)}
    return params


def hf_from_params(params: dict, config: Qwen2Config) -> dict[str, np.ndarray]:
    """Hugging Face names and layouts from a Flax parameter tree (any array type with .T)."""
    tensors = {
        "model.embed_tokens.weight": params["embed_tokens"]["embedding"],
        "model.norm.weight": params["norm"]["scale"],
    }
    layer = params["layers"]["layer"]
    for hf_suffix, (module, leaf), transpose in _LAYER_TENSORS:
        for i in range(config.num_hidden_layers):
            value = layer[module][leaf][i]
            tensors[f"model.layers.{i}.{hf_suffix}"] = value.T if transpose else value
    if not config.tie_word_embeddings:
        tensors["lm_head.weight"] = params["lm_head"]["kernel"].T
    return tensors


def load_params(model_dir: str | Path, config: Qwen2Config, dtype) -> dict:
    return params_from_hf(read_hf_tensors(model_dir), config, dtype)

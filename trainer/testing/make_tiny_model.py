"""Build a tiny Qwen2-shaped model folder with random weights, loadable by the trainer and sglang-jax.

The folder holds what a Hugging Face checkpoint holds: config.json, generation_config.json,
model.safetensors (or shards plus an index), and a byte-level BPE tokenizer trained here with
`tokenizers`, carrying a ChatML chat template. head_dim is 128 because sglang-jax rounds head_dim
up to a multiple of 128; with 128 in config.json both sides see the same shapes.

Usage: python -m trainer.testing.make_tiny_model OUT_DIR [--seed N] [--vocab-size N] [--layers N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trainer.data import synthetic_arithmetic

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_ENGLISH = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did she sell altogether? Weng earns $12 an hour for babysitting. "
    "Think step by step. The answer is the final number. Give the answer after ####. "
    "You are a helpful assistant. <think> reasoning </think> <answer> 42 </answer> \\boxed{7}"
)


def tokenizer_corpus() -> list[str]:
    problems = synthetic_arithmetic("train", 400, 9, seed=0)
    lines = [f"{p.question} {p.question.split('is ')[1][:-1]} = {p.answer}\n#### {p.answer}" for p in problems]
    return lines + [_ENGLISH] * 20


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte-level BPE with Qwen-style single-digit splitting, so numbers are digit tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return tok


def hf_config(vocab_size: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
              head_dim: int, tie: bool, eos_id: int, pad_id: int) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tie, "torch_dtype": "float32", "use_sliding_window": False,
        "bos_token_id": pad_id, "eos_token_id": eos_id, "pad_token_id": pad_id, "attention_bias": True,
    }


def random_hf_tensors(config: dict, seed: int) -> dict[str, np.ndarray]:
    """Weights in Hugging Face names and [out, in] layout; norms near 1 so activations stay sane."""
    rng = np.random.default_rng(seed)
    h, inter, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors = {"model.embed_tokens.weight": normal(config["vocab_size"], h),
               "model.norm.weight": 1.0 + normal(h, std=0.1)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": 1.0 + normal(h, std=0.1),
            p + "post_attention_layernorm.weight": 1.0 + normal(h, std=0.1),
            p + "self_attn.q_proj.weight": normal(q, h, std=0.2), p + "self_attn.q_proj.bias": normal(q),
            p + "self_attn.k_proj.weight": normal(kv, h, std=0.2), p + "self_attn.k_proj.bias": normal(kv),
            p + "self_attn.v_proj.weight": normal(kv, h, std=0.2), p + "self_attn.v_proj.bias": normal(kv),
            p + "self_attn.o_proj.weight": normal(h, q, std=0.2),
            p + "mlp.gate_proj.weight": normal(inter, h, std=0.2),
            p + "mlp.up_proj.weight": normal(inter, h, std=0.2),
            p + "mlp.down_proj.weight": normal(h, inter, std=0.2),
        }
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = normal(config["vocab_size"], h)
    return tensors


def save_safetensors(tensors: dict[str, np.ndarray], out_dir: Path, num_shards: int) -> None:
    if num_shards == 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    weight_map = {}
    for shard, chunk in enumerate(np.array_split(np.array(names), num_shards)):
        file = f"model-{shard + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file({n: tensors[n] for n in chunk}, str(out_dir / file), metadata={"format": "pt"})
        weight_map |= {str(n): file for n in chunk}
    index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def make_tiny_model(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 512, hidden_size: int = 64,
                    intermediate_size: int = 128, num_layers: int = 2, num_heads: int = 2,
                    num_kv_heads: int = 1, head_dim: int = 128, tie_word_embeddings: bool = True,
                    num_shards: int = 1) -> Path:
    """Write the tiny model folder and return its absolute path (head_dim other than 128 exercises
    sglang-jax's padding)."""
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(vocab_size)
    eos_id, pad_id = tok.token_to_id(IM_END), tok.token_to_id(PAD)
    config = hf_config(vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads,
                       head_dim, tie_word_embeddings, eos_id, pad_id)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    (out_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos_id, pad_id]}))
    save_safetensors(random_hf_tensors(config, seed), out_dir, num_shards)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD,
                            additional_special_tokens=[IM_START], chat_template=CHAT_TEMPLATE,
                            model_max_length=2048).save_pretrained(str(out_dir))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random Qwen2 model folder.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--untied", action="store_true", help="separate lm_head instead of tied embeddings")
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args(argv)
    path = make_tiny_model(args.out_dir, seed=args.seed, vocab_size=args.vocab_size, num_layers=args.layers,
                           tie_word_embeddings=not args.untied, num_shards=args.shards)
    print(path)


if __name__ == "__main__":
    main()

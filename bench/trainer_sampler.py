"""Decode throughput of the built-in JAX sampler against the roofline, in one run.

Each decode step reads every parameter (and the KV cache) once for all rows: the memory roofline is
rows x bandwidth / bytes read per step, with the bandwidth measured here on the same device. With
many rows a step can instead be compute-bound: the compute roofline is the jnp.dot peak measured here
/ FLOPs per token. The roofline is the lower of the two. Prints one JSON object.

    python bench/trainer_sampler.py [--model-dir DIR] [--rows 16] [--prompt-len 64] [--new-tokens 64]
        [--layer-loop auto|scan|unrolled] [--sampling-method auto|gumbel|inverse_cdf]

The layer loop and the draw default to what the trainer picks on this platform (`auto`).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from trainer.model.load import layer_loop
from trainer.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from trainer.model.weights import load_params
from trainer.rollout.sampling import generate, sampling_method
from trainer.testing import perf
from trainer.testing.make_tiny_model import make_tiny_model


def bench_model_dir(hidden: int, layers: int) -> str:
    """A random model big enough that weight reads, not dispatch, dominate a decode step."""
    return str(make_tiny_model(tempfile.mkdtemp(prefix="bench-model-"), hidden_size=hidden,
                               intermediate_size=3 * hidden, num_layers=layers, num_heads=hidden // 128,
                               num_kv_heads=max(hidden // 256, 1)))


def decode_seconds_per_step(model, params, ids, mask, new_tokens: int, inverse_cdf: bool) -> float:
    """Time of one decode step: the difference between full and half-length generations (prefill cancels)."""

    def run(length):
        return lambda: jax.block_until_ready(
            generate(model, params, ids, mask, jax.random.key(0), jnp.float32(1.0), max_new_tokens=length,
                     top_k=-1, top_p=1.0, stop_ids=(-1,), pad_id=0, inverse_cdf=inverse_cdf))  # -1: never stops

    half = new_tokens // 2
    return (perf.best_time(run(new_tokens), 3) - perf.best_time(run(half), 3)) / (new_tokens - half)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", help="a Qwen2 folder; default: a random 512-wide, 8-layer model")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layer-loop", default="auto", choices=["auto", "scan", "unrolled"])
    parser.add_argument("--sampling-method", default="auto", choices=["auto", "gumbel", "inverse_cdf"])
    args = parser.parse_args()
    platform = jax.default_backend()
    loop, method = layer_loop(args.layer_loop, platform), sampling_method(args.sampling_method, platform)

    model_dir = args.model_dir or bench_model_dir(hidden=512, layers=8)
    config = Qwen2Config.from_dir(model_dir)
    dtype = jnp.dtype(args.dtype)
    model = Qwen2ForCausalLM(config, dtype=dtype, param_dtype=dtype, scan_layers=loop == "scan")
    params = jax.tree.map(jnp.asarray, load_params(model_dir, config, dtype))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, 400, (args.rows, args.prompt_len)), jnp.int32)
    mask = jnp.ones_like(ids)

    step_s = decode_seconds_per_step(model, params, ids, mask, args.new_tokens, method == "inverse_cdf")
    bandwidth = perf.memory_bandwidth_bytes_per_s()
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    cache_len = args.prompt_len + args.new_tokens
    kv_bytes = (2 * config.num_hidden_layers * args.rows * cache_len * config.num_key_value_heads
                * config.head_dim * dtype.itemsize)
    measured = args.rows / step_s
    memory_roofline = args.rows * bandwidth / (param_bytes + kv_bytes)
    # Per token: 2 FLOPs per weight (the tied head counts as a matmul) plus q.k and p.v over the cache.
    flops_per_token = 2 * config.num_params() + 4 * config.num_hidden_layers * config.num_attention_heads * \
        config.head_dim * cache_len
    peak_flops = perf.matmul_peak_flops(dtype=dtype)
    compute_roofline = peak_flops / flops_per_token
    roofline = min(memory_roofline, compute_roofline)
    # The rate at which this platform's matmul reads a decode step's weights with `rows` rows (the MLP's
    # up projection's shape): on the CPU well under the read bandwidth, a ceiling below the roofline.
    matmul_bandwidth = perf.weight_read_bytes_per_s(args.rows, config.hidden_size, config.intermediate_size, dtype)
    matmul_bound = args.rows * matmul_bandwidth / (param_bytes + kv_bytes)
    print(json.dumps({
        "bench": "trainer_sampler", "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
        "params": config.num_params(), "dtype": args.dtype, "layer_loop": loop, "sampling_method": method,
        "rows": args.rows, "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "decode_step_ms": step_s * 1e3, "decode_tokens_per_s": measured,
        "measured_bandwidth_gb_per_s": bandwidth / 1e9, "param_bytes": param_bytes, "kv_cache_bytes": kv_bytes,
        "matmul_peak_gflop_per_s": peak_flops / 1e9, "flops_per_token": flops_per_token,
        "memory_roofline_tokens_per_s": memory_roofline, "compute_roofline_tokens_per_s": compute_roofline,
        "bound": "memory" if memory_roofline < compute_roofline else "compute",
        "roofline_tokens_per_s": roofline, "fraction_of_roofline": measured / roofline,
        "decode_matmul_weight_gb_per_s": matmul_bandwidth / 1e9, "matmul_bound_tokens_per_s": matmul_bound,
        "fraction_of_matmul_bound": measured / matmul_bound,
    }, indent=1))


if __name__ == "__main__":
    main()

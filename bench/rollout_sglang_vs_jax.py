"""Decode throughput of the sglang_jax engine against the built-in JAX sampler on the same model, rows
and lengths, in one run, plus the engine's weight-push time. Prints one JSON object.

    python bench/rollout_sglang_vs_jax.py [--model-dir DIR] [--rows 16] [--prompt-len 64] [--new-tokens 64]

Decode tokens/s is measured as (tokens generated at N new tokens - tokens at N/2) / (time difference),
which cancels prefill; both backends count the tokens they actually produced (a random model
sometimes samples a stop token).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from trainer.auto_values import resolve_auto_values
from trainer.config import load_config
from trainer.model.load import build_model
from trainer.model.tokenizer import ChatTokenizer
from trainer.rollout.jax_sampler import JaxSamplerBackend
from trainer.rollout.sampling import SamplingSettings
from trainer.rollout.sglang_jax import SglangJaxBackend
from trainer.runtime import start
from trainer.sharding import put_tree, tree_shardings

sys.path.insert(0, str(Path(__file__).parent))
from trainer_sampler import bench_model_dir  # noqa: E402


def timed_generate(backend, ids, mask, new_tokens: int, repeats: int = 3) -> tuple[float, float]:
    """Best wall time of a generate after a warm-up, and the tokens that call produced."""
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=1.0)
    backend.generate(ids, mask, settings, seed=0)
    best = (float("inf"), 0)
    for seed in range(repeats):
        start_s = time.perf_counter()
        out = backend.generate(ids, mask, settings, seed=seed + 1)
        best = min(best, (time.perf_counter() - start_s, int(out.completion_mask_NxC.sum())))
    return best


def decode_tokens_per_s(backend, ids, mask, new_tokens: int) -> dict[str, float]:
    full_s, full_tokens = timed_generate(backend, ids, mask, new_tokens)
    half_s, half_tokens = timed_generate(backend, ids, mask, new_tokens // 2)
    return {"decode_tokens_per_s": (full_tokens - half_tokens) / (full_s - half_s),
            "generate_tokens_per_s": full_tokens / full_s, "generate_s": full_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    model_dir = Path(args.model_dir or bench_model_dir(hidden=512, layers=8))
    config = load_config(None, environ={}, sets=[
        f"model_path={model_dir}", "rollout.backend=sglang_jax", f"rollout.batch_size={args.rows}",
        "rollout.group_size=1", f"train.micro_batch_size={args.rows}", f"rollout.prompt_length={args.prompt_len}",
        f"rollout.max_new_tokens={args.new_tokens}", "out_dir=/tmp/rollout-bench"])
    runtime = start(config)
    config = resolve_auto_values(config, runtime, model_dir)
    tokenizer = ChatTokenizer(model_dir)
    model, host_params = build_model(model_dir, config.model, runtime.platform)
    params = put_tree(host_params, tree_shardings(host_params, runtime.mesh))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 400, (args.rows, args.prompt_len)).astype(np.int32)
    mask = np.ones_like(ids)

    jax_backend = JaxSamplerBackend.create(config, model, runtime, tokenizer, model_dir)  # the platform's defaults
    jax_backend.push_weights(params)
    jax_figures = decode_tokens_per_s(jax_backend, ids, mask, args.new_tokens)

    with SglangJaxBackend(config, model.config, runtime, tokenizer, model_dir) as engine:
        pushes = []
        for scale in (1.0, 1.01, 1.02, 1.03, 1.04):
            scaled = jax.block_until_ready(jax.tree.map(lambda x, s=scale: x * s, params))
            start_s = time.perf_counter()
            engine.push_weights(scaled)
            pushes.append(time.perf_counter() - start_s)
        sglang_figures = decode_tokens_per_s(engine, ids, mask, args.new_tokens)

    faster = "sglang_jax" if sglang_figures["decode_tokens_per_s"] > jax_figures["decode_tokens_per_s"] else "jax"
    print(json.dumps({
        "bench": "rollout_sglang_vs_jax", "platform": runtime.platform, "device": str(jax.devices()[0].device_kind),
        "params": model.config.num_params(), "dtype": config.model.dtype, "rows": args.rows,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "jax": jax_figures, "sglang_jax": sglang_figures,
        "sglang_weight_push_s": {"first": pushes[0], "steady_median": statistics.median(pushes[1:])},
        "faster_decode": faster,
    }, indent=1))


if __name__ == "__main__":
    main()

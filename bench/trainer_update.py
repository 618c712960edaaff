"""The GRPO loop's update phase: FLOP/s against a jnp.dot peak measured in the same run, compilations
after step 0 (must be 0), peak memory, and the time of every phase. Prints one JSON object.

    python bench/trainer_update.py [--model-dir DIR] [--steps 4] [--set key=value ...]

Without --model-dir a random 512-wide, 8-layer Qwen2 is built; the data is the synthetic task unless
--set data.source=gsm8k --set data.path=DIR is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import jax

from trainer.auto_values import resolve_auto_values
from trainer.config import load_config
from trainer.loop import GRPOLoop, StopSignal
from trainer.model.qwen2 import Qwen2Config
from trainer.runtime import start
from trainer.sharding import data_parallel_size
from trainer.testing import perf
from trainer.train_step import usable_prompt_group

sys.path.insert(0, str(Path(__file__).parent))
from trainer_sampler import bench_model_dir  # noqa: E402

DEFAULT_SETS = ["rollout.batch_size=8", "rollout.group_size=8", "rollout.prompt_length=32",
                "rollout.max_new_tokens=32", "train.micro_batch_size=16", "checkpoint.resume=false"]


def update_flops(config: Qwen2Config, rows: int, prompt_len: int, new_tokens: int, forwards: float,
                 prompt_group: int = 1) -> float:
    """FLOPs of `forwards` forward-pass equivalents over the batch (training = 3: forward + backward).
    With prompt_group > 1 each group's prompt is forwarded once (the trainer's shared-prompt forward)."""
    h, d, layers = config.hidden_size, config.head_dim, config.num_hidden_layers
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    linear = layers * (h * (q + 2 * kv) + q * h + 3 * h * config.intermediate_size)
    t = prompt_len + new_tokens
    prompt_rows = rows // prompt_group
    # A whole row's positions attend over all t keys (masked causally); a shared prompt's over its own.
    prompt_keys = t if prompt_group == 1 else prompt_len
    linear_flops = 2 * linear * (prompt_rows * prompt_len + rows * new_tokens)
    attention_flops = 4 * layers * config.num_attention_heads * d * (prompt_rows * prompt_len * prompt_keys
                                                                      + rows * new_tokens * t)
    logits = rows * 2 * (new_tokens + 1) * h * config.vocab_size  # logits only over the completion
    return forwards * (linear_flops + attention_flops + logits)


def trainer_prompt_group(loop: GRPOLoop) -> int:
    """The prompt group the loop's update forwards once (1: every row forwarded whole)."""
    c = loop.config
    return usable_prompt_group(loop.model, c.rollout.group_size, c.rows, c.rows // c.train.micro_batch_size,
                               data_parallel_size(loop.runtime.mesh))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    model_dir = args.model_dir or bench_model_dir(hidden=512, layers=8)
    out_dir = f"/tmp/trainer-bench-{Path(model_dir).name}"
    config = load_config(None, sets=DEFAULT_SETS + [f"model_path={model_dir}", f"steps={args.steps}",
                                                    f"out_dir={out_dir}"] + args.set, environ={})
    runtime = start(config)
    config = resolve_auto_values(config, runtime, Path(model_dir))
    loop = GRPOLoop(config, runtime, Path(model_dir), out=lambda line: None)
    loop.backend.push_weights(loop.state.params)
    steps = []
    with StopSignal() as stop:
        for step in range(config.steps):
            steps.append(loop.train_one_step(step, stop))
            if step == 0:
                compiles_after_step0 = perf.compile_count()
    compiles_after_step0 = perf.compile_count() - compiles_after_step0
    loop.backend.shutdown()

    steady = steps[1:] or steps
    update_s = statistics.median(m["time/update_s"] for m in steady)
    forwards = 3 + (1 if loop.use_old_logps else 0) + (1 if config.train.beta > 0 else 0)
    flops = update_flops(loop.model.config, config.rows, config.rollout.prompt_length,
                         config.rollout.max_new_tokens, forwards, trainer_prompt_group(loop)) * config.train.num_iterations
    peak = perf.matmul_peak_flops(dtype=loop.model.dtype)
    print(json.dumps({
        "bench": "trainer_update", "device": str(jax.devices()[0].device_kind), "platform": runtime.platform,
        "params": loop.model.config.num_params(), "rows": config.rows, "steps": config.steps,
        "compiles_after_step0": compiles_after_step0,
        "step0_s": steps[0]["time/step_s"], "step_s": statistics.median(m["time/step_s"] for m in steady),
        "rollout_s": statistics.median(m["time/rollout_s"] for m in steady), "update_s": update_s,
        "weight_push_s": statistics.median(m["time/weight_push_s"] for m in steady),
        "update_gflop": flops / 1e9, "update_gflop_per_s": flops / update_s / 1e9,
        "matmul_peak_gflop_per_s": peak / 1e9, "fraction_of_matmul_peak": flops / update_s / peak,
        "completion_tokens_per_s": statistics.median(m["throughput/completion_tokens_per_s"] for m in steady),
        **perf.peak_memory_bytes(),
    }, indent=1))


if __name__ == "__main__":
    main()

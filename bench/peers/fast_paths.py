"""The trainer's per-platform settings against each other on the peer workload's model, in one run: the
decode step for each `model.layer_loop` x `rollout.sampling_method`, the CPU's whole rollout with one
prefill per row or per group of 4 rows sharing a prompt, and the update for each layer loop x
micro-batch count, and with each group's prompt forwarded once. Prints one line per case and one JSON
object.

    .venv/bin/python bench/peers/fast_paths.py [--rounds 4] [--hidden 256 --layers 4]

Figures are this process's CPU seconds (every XLA thread included), the fastest of --rounds rounds
run round-robin, so that other jobs on a shared machine disturb them less than wall-clock time; a
decode step is the difference between 64 and 32 new tokens over 32. Random prompts, each repeated for
its group as the loop's rows are, and random completions, of the workload's shapes (16 rows, 128 + 64
tokens); --hidden / --layers build a wider or deeper model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import workload

from trainer.config import OptimSection, TrainSection
from trainer.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from trainer.model.weights import load_params
from trainer.rollout.sampling import generate
from trainer.sharding import make_mesh
from trainer.testing.make_tiny_model import make_tiny_model
from trainer.train_step import TrainBatch, init_state, make_optimizer, make_train_step

ROWS = workload.PROMPTS_PER_STEP * workload.GROUP


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def fastest(calls: dict, rounds: int) -> dict:
    for call in calls.values():
        call()
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            best[name] = min(best[name], cpu_seconds(call))
    return best


def decode_calls(model_config, params, ids, mask) -> dict:
    def call(scan: bool, inverse_cdf: bool, new_tokens: int, group: int = 1):
        model = Qwen2ForCausalLM(model_config, scan_layers=scan)
        return lambda: jax.block_until_ready(generate(
            model, params, ids, mask, jax.random.key(0), jnp.float32(1.0), max_new_tokens=new_tokens, top_k=-1,
            top_p=1.0, stop_ids=(), pad_id=0, inverse_cdf=inverse_cdf, prompt_group=group))

    calls = {(loop, method, n): call(loop == "scan", method == "inverse_cdf", n)
             for loop in ("scan", "unrolled") for method in ("gumbel", "inverse_cdf") for n in (64, 32)}
    # The whole rollout (prefill included) of the CPU's defaults, one prefill per row or per group.
    calls |= {("rollout", group, 64): call(False, True, 64, group) for group in (1, workload.GROUP)}
    return calls


def update_calls(model_config, params, batch) -> dict:
    optimizer = make_optimizer(OptimSection(learning_rate=1e-6, warmup_steps=0, max_grad_norm=0.0), 100)
    mesh, calls = make_mesh("1,-1,1"), {}
    cases = [(loop, rows, 1) for loop in ("scan", "unrolled") for rows in (ROWS, 4)] + [("unrolled", 4, workload.GROUP)]
    for loop, rows, group in cases:  # group: rows sharing a prompt, whose forward the update then shares
        state, shardings = init_state(params, optimizer, mesh)
        step = make_train_step(Qwen2ForCausalLM(model_config, scan_layers=loop == "scan"), optimizer,
                               TrainSection(loss_type="grpo", micro_batch_size=rows), ROWS // rows, 1.0,
                               shardings, mesh)
        box = [state]

        def call(step=step, box=box, grouped=batch.replace(prompt_group=group)):
            box[0], metrics = step(box[0], grouped)
            jax.block_until_ready(metrics)

        calls[(loop, rows, group)] = call
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=workload.MODEL["hidden_size"])
    parser.add_argument("--layers", type=int, default=workload.MODEL["num_layers"])
    args = parser.parse_args()
    m = workload.MODEL
    model_dir = make_tiny_model(Path(tempfile.mkdtemp(prefix="bench-fast-paths-")) / "model", seed=0,
                                vocab_size=m["vocab_size"], hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                                num_layers=args.layers, num_heads=m["num_heads"], num_kv_heads=m["num_kv_heads"],
                                head_dim=m["head_dim"])
    model_config = Qwen2Config.from_dir(model_dir)
    params = jax.tree.map(jnp.asarray, load_params(model_dir, model_config, np.float32))
    rng = np.random.default_rng(0)
    # The workload's rows: 4 prompts, each repeated for its group.
    ids = jnp.repeat(jnp.asarray(rng.integers(3, 400, (workload.PROMPTS_PER_STEP, workload.PROMPT_LEN)), jnp.int32),
                     workload.GROUP, axis=0)
    completion = jnp.asarray(rng.integers(3, m["vocab_size"], (ROWS, workload.NEW_TOKENS)), jnp.int32)
    ones = jnp.ones((ROWS, workload.NEW_TOKENS), jnp.float32)
    batch = TrainBatch(ids, jnp.ones_like(ids), completion, ones, ones, jnp.asarray(rng.normal(size=ROWS), jnp.float32))
    decode = fastest(decode_calls(model_config, params, ids, jnp.ones_like(ids)), args.rounds)
    update = fastest(update_calls(model_config, params, batch), args.rounds)
    step_ms = {(loop, method): (decode[(loop, method, 64)] - decode[(loop, method, 32)]) / 32 * 1e3
               for loop, method, n in decode if n == 64 and loop != "rollout"}
    rollout = {group: decode[("rollout", group, 64)] for group in (1, workload.GROUP)}
    for (loop, method), ms in step_ms.items():
        print(f"decode step, {loop:8s} {method:11s} {ms:6.2f} ms  {ms / step_ms[('scan', 'gumbel')]:.2f}x")
    for group, seconds in rollout.items():
        print(f"rollout of 64 tokens, unrolled, prefill per {group} rows {seconds:6.3f} s  {seconds / rollout[1]:.2f}x")
    for (loop, rows, group), seconds in update.items():
        print(f"update, {loop:8s} micro-batches of {rows:2d} rows, prompt shared by {group} {seconds:6.3f} s  "
              f"{seconds / update[('scan', ROWS, 1)]:.2f}x")
    print(json.dumps({"bench": "fast_paths", "hidden": args.hidden, "layers": args.layers, "rounds": args.rounds,
                      "decode_step_cpu_ms": {f"{k[0]},{k[1]}": v for k, v in step_ms.items()},
                      "rollout_cpu_s": {f"unrolled,inverse_cdf,prompt_group={k}": v for k, v in rollout.items()},
                      "update_cpu_s": {f"{k[0]},micro_batch_size={k[1]},prompt_group={k[2]}": v
                                       for k, v in update.items()}}))


if __name__ == "__main__":
    main()

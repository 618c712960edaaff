"""Candidate speed-ups of this trainer's GRPO step on the peer workload, each measured against the
trainer's own code in one run (issue 12's diagnosis). Prints one JSON object and a table.

    .venv/bin/python bench/peers/experiments.py [--rounds 9] [--gsm8k-dir DIR]

Two groups, each timed round-robin in a fresh random order per round, the fastest call of each kept
(wall clock, and this process's CPU seconds, which other processes on a shared machine disturb less):
- update: the trainer's jitted train step (micro-batches of 16, 8, 4 rows; remat) and the variants of
  bench/peers/variants.py, each a whole donated update (forward, backward, AdamW);
- rollout: the trainer's `generate` and the decode-loop variants, at 64 and at 1 new token, so that the
  difference gives the time per decode step.
Each group holds a second copy of its baseline as a control: its ratio (about 1.00) is the noise.
The update's floor (its FLOPs at the jnp.dot peak) and the decode step's (every parameter and the KV
cache read once at the measured bandwidth, or its FLOPs at the peak, whichever is longer) come from
the same run, as in profile_step.py. Before timing, every variant is checked against the trainer:
logits, the update's loss and gradient norm, and the log-probs of what a decode variant sampled under
the trainer's own forward.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import variants
import workload
from profile_step import floors
from run import prepare
from run_trainer import workload_sets

from trainer.advantages import group_advantages
from trainer.auto_values import resolve_auto_values
from trainer.config import load_config
from trainer.loop import GRPOLoop
from trainer.model.qwen2 import Qwen2ForCausalLM
from trainer.rollout.sampling import generate
from trainer.runtime import start
from trainer.testing import perf
from trainer.train_step import TrainState, completion_logps, make_train_step

UPDATE_VARIANTS = {  # name -> (num_micro, fused params, make_update switches); None switches: the trainer's step
    "trainer step (micro-batch 16)": (1, False, None),
    "trainer step again (control)": (1, False, None),
    "trainer step, micro-batch 8": (2, False, None),
    "trainer step, micro-batch 4": (4, False, None),
    "trainer step, remat": (1, False, "remat"),
    "variant as the trainer (scan)": (1, False, {}),
    "no micro-batch scan (one micro-batch)": (1, False, {"micro_scan": False}),
    "unrolled layers": (1, False, {"unroll": True}),
    "fused qkv and gate-up": (1, True, {}),
    "heads-first attention": (1, False, {"heads_first": True}),
    "exact completion logits": (1, False, {"exact_logits": True}),
    "one-hot token log-probs": (1, False, {"one_hot": True}),
    "unrolled + fused + exact + one-hot": (1, True, {"unroll": True, "exact_logits": True, "one_hot": True}),
    "... and no micro-batch scan": (1, True, {"unroll": True, "exact_logits": True, "one_hot": True,
                                              "micro_scan": False}),
    "... and micro-batch 8": (2, True, {"unroll": True, "exact_logits": True, "one_hot": True}),
    "... and micro-batch 4": (4, True, {"unroll": True, "exact_logits": True, "one_hot": True}),
    "... and micro-batch 4, remat": (4, True, {"unroll": True, "exact_logits": True, "one_hot": True, "remat": True}),
}
DECODE_VARIANTS = {  # name -> (fused params, variants.generate switches); None: the trainer's generate
    "trainer generate (the platform's defaults)": (False, None),
    "trainer generate again (control)": (False, None),
    "heads-first cache per layer, unrolled, fori_loop": (False, {}),
    "... with while_loop": (False, {"while_loop": True}),
    "... with inverse-CDF sampling": (False, {"inverse_cdf": True}),
    "... with fused qkv and gate-up": (True, {}),
    "... all: fused, inverse-CDF": (True, {"inverse_cdf": True}),
}


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def race(calls: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """Fastest (wall, cpu) of each call over `rounds` rounds, each round in a fresh random order."""
    for call in calls.values():
        call()
    results = {name: [] for name in calls}
    for r in range(rounds):
        order = list(calls)
        random.Random(r).shuffle(order)
        for name in order:
            results[name].append(timed(calls[name]))
    return {name: (min(w for w, _ in v), min(c for _, c in v)) for name, v in results.items()}


def setup(gsm8k_dir: Path):
    workdir = Path(tempfile.mkdtemp(prefix="bench-experiments-"))
    prepare(workdir, gsm8k_dir, workload.STEPS)
    config = load_config(None, environ={}, sets=workload_sets(workdir, 100, str(workdir / "out")))
    runtime = start(config)
    config = resolve_auto_values(config, runtime, workdir / "model")
    loop = GRPOLoop(config, runtime, workdir / "model", out=lambda line: None)
    loop.backend.push_weights(loop.state.params)
    problems = loop.problems_of_this_process(loop.stream.next_batch(config.rollout.batch_size))
    ids, mask = loop.encode(problems)
    rollout = loop.backend.generate(ids, mask, loop.sampling, seed=0)
    _, rewards = loop.score(rollout, problems)
    advantages = group_advantages(rewards, config.rollout.group_size, config.train.scale_rewards)
    # Whole rows, as the variants compute them: the trainer's shared-prompt update is fast_paths.py's to measure.
    batch = loop.train_batch(ids, mask, rollout, advantages, rewards).replace(prompt_group=1)
    return loop, jnp.asarray(ids), jnp.asarray(mask), batch


def update_calls(loop, batch):
    """name -> a call running one whole update on a fresh copy of the state; and the first call's metrics."""
    cfg, optimizer, rows = loop.model.config, loop.optimizer, loop.config.rows
    train = loop.config.train
    plain = loop.state
    fused = TrainState(plain.step, variants.fuse(plain.params), optimizer.init(variants.fuse(plain.params)))
    calls, metrics = {}, {}
    for name, (num_micro, use_fused, switches) in UPDATE_VARIANTS.items():
        if switches is None or switches == "remat":
            model = Qwen2ForCausalLM(cfg, remat=True) if switches == "remat" else loop.model
            step = make_train_step(model, optimizer, train, num_micro, loop.config.rollout.temperature,
                                   loop.state_shardings, loop.runtime.mesh)
        else:
            step = variants.make_update(cfg, optimizer, train, rows, num_micro=num_micro, **switches)
        state = fused if use_fused else plain

        def call(step=step, state=state):
            fresh = jax.block_until_ready(jax.tree.map(jnp.copy, state))
            return jax.block_until_ready(step(fresh, batch))

        calls[name] = call
        out = call()[1]
        metrics[name] = {k: float(out[k]) for k in ("loss", "grad_norm")}
    return calls, metrics


def decode_call(loop, ids, mask, params, switches, new_tokens: int):
    """One generate of new_tokens per row: the trainer's (switches None) or a variant's."""
    key = jax.random.key(0)
    if switches is None:
        return lambda: jax.block_until_ready(generate(loop.model, params, ids, mask, key, np.float32(1.0),
                                                      max_new_tokens=new_tokens, top_k=-1, top_p=1.0, stop_ids=(),
                                                      pad_id=0))
    return lambda: jax.block_until_ready(variants.generate(params, ids, mask, key, cfg=loop.model.config,
                                                           new_tokens=new_tokens, **switches))


def decode_calls(loop, ids, mask):
    params = loop.state.params
    fused = variants.fuse(params)
    calls, logp_errors = {}, {}
    for name, (use_fused, switches) in DECODE_VARIANTS.items():
        for new in (workload.NEW_TOKENS, 1):
            calls[(name, new)] = decode_call(loop, ids, mask, fused if use_fused else params, switches, new)
        out = calls[(name, workload.NEW_TOKENS)]()
        trainer_logps, _ = completion_logps(loop.model, params, ids, mask, out[0], 1.0)
        logp_errors[name] = float(jnp.max(jnp.abs(out[-1] - trainer_logps)))
    return calls, logp_errors


def forward_errors(loop, batch) -> dict[str, float]:
    """Max |logits - the trainer's logits| of every forward switch on the workload batch."""
    cfg, params = loop.model.config, loop.state.params
    tokens, positions, key_valid = variants.model_inputs(batch)
    c = batch.completion_ids_NxC.shape[1]
    reference, _ = loop.model.apply({"params": params}, tokens, positions, key_valid, logits_last_n=c + 1)
    switches = {"scan": ({}, params), "unrolled": ({"unroll": True}, params), "fused": ({}, variants.fuse(params)),
                "heads-first": ({"heads_first": True}, params), "remat": ({"remat": True}, params)}
    return {name: float(jnp.max(jnp.abs(jax.jit(lambda p, s=s: variants.forward(
        p, tokens, positions, key_valid, cfg, c + 1, **s))(p) - reference))) for name, (s, p) in switches.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--gsm8k-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "tests" / "trainer" / "data" / "gsm8k")
    args = parser.parse_args()
    loop, ids, mask, batch = setup(args.gsm8k_dir)
    checks = {"max_abs_logit_error": forward_errors(loop, batch)}
    calls, checks["update_metrics"] = update_calls(loop, batch)
    update = race(calls, args.rounds)
    calls, checks["max_abs_logp_error_vs_trainer"] = decode_calls(loop, ids, mask)
    decode = race(calls, args.rounds)
    peak, bandwidth = perf.matmul_peak_flops(), perf.memory_bandwidth_bytes_per_s()
    floor = floors(loop, 1, peak, bandwidth)
    update_floor_s = floor["forward"] + floor["backward"] + floor["optimizer"]
    decode_floor_s = floor["decode"] / workload.NEW_TOKENS
    rows = {}
    base = update["trainer step (micro-batch 16)"]
    for name, (wall, cpu) in update.items():
        rows[f"update: {name}"] = {"wall_s": wall, "cpu_s": cpu, "wall_x": wall / base[0], "cpu_x": cpu / base[1],
                                   "fraction_of_floor": update_floor_s / wall}
    steps = workload.NEW_TOKENS - 1
    full, one = decode[("trainer generate (the platform's defaults)", workload.NEW_TOKENS)], \
        decode[("trainer generate (the platform's defaults)", 1)]
    for name in DECODE_VARIANTS:
        (w64, c64), (w1, _) = decode[(name, workload.NEW_TOKENS)], decode[(name, 1)]
        rows[f"rollout: {name}"] = {"wall_s": w64, "cpu_s": c64, "wall_x": w64 / full[0], "cpu_x": c64 / full[1],
                                    "decode_step_ms": (w64 - w1) / steps * 1e3,
                                    "decode_step_x": (w64 - w1) / (full[0] - one[0]),
                                    "fraction_of_floor": decode_floor_s / ((w64 - w1) / steps)}
    for name, row in rows.items():
        extra = f"  decode step {row['decode_step_ms']:.2f} ms ({row['decode_step_x']:.2f}x)" if "decode_step_ms" in row \
            else ""
        print(f"{name:62s} wall {row['wall_s']:.3f}s ({row['wall_x']:.2f}x)  cpu {row['cpu_s']:.3f}s "
              f"({row['cpu_x']:.2f}x){extra}  {100 * row['fraction_of_floor']:.0f}% of floor")
    print(json.dumps({"bench": "step_experiments", "rounds": args.rounds, "matmul_peak_gflop_per_s": peak / 1e9,
                      "bandwidth_gb_per_s": bandwidth / 1e9, "update_floor_s": update_floor_s,
                      "decode_step_floor_ms": decode_floor_s * 1e3, "checks": checks, "results": rows}))


if __name__ == "__main__":
    main()

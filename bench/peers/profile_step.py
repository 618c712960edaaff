"""Where this trainer's GRPO step goes on the peer workload: every phase timed on its own (the fastest of
--repeats calls, each ending with block_until_ready or a host copy), next to its floor on this machine
from the jnp.dot peak and the memory bandwidth measured in the same run. Prints one JSON object.

    .venv/bin/python bench/peers/profile_step.py [--repeats 5] [--gsm8k-dir DIR] [--set key=value ...]

Each phase is timed on its own, so the phases need not add up to the step exactly. In step order:
rollout prefill (one prompt per group into the KV cache, as the sampler runs it) and decode (64
sampled tokens, host copy included); reward (decode to text, score, advantages, host batch); the
update split into forward (logits of the completion positions, each group's prompt forwarded once
where the trainer does so), log-probs (log-softmax, entropy and loss, timed from ready logits), backward
(forward and backward together, less those two), optimizer (AdamW on the gradients) and the train
step's own remainder (micro-batch scan, metrics); weight push.
"step" is the fastest of --repeats of the loop's own `train_one_step`, and "host_between_phases" what
that step spent outside generate, update and push by its own timings (prompt encoding, reward,
advantages, the step report). "old_logps_pass" is not in this workload's step: it is the extra forward
the loop runs for old log-probs with rollout.backend=sglang_jax or train.num_iterations > 1.

Floors, for the work the trainer does (a shared prompt counted once): compute phases FLOPs / the
jnp.dot peak; decode per token max(bytes read / bandwidth, FLOPs / peak) with every parameter and the
KV cache read once per token; the optimizer's bytes (params, grads, two moments read, three written) /
bandwidth.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import workload
from run import prepare
from run_trainer import workload_sets

from trainer.advantages import group_advantages
from trainer.auto_values import resolve_auto_values
from trainer.config import load_config
from trainer.loop import GRPOLoop, StopSignal
from trainer.losses import per_token_loss, token_logps_and_entropy, token_weights
from trainer.model.qwen2 import prefill, prompt_positions, unstack_layers
from trainer.runtime import start
from trainer.testing import perf
from trainer.train_step import shared_prompt_logits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer_update import trainer_prompt_group, update_flops  # noqa: E402


def best(fn, repeats: int) -> float:
    fn()
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_inputs(batch):
    """Tokens, positions and key mask of whole rows, as the trainer's completion_logps builds them."""
    c = batch.completion_ids_NxC.shape[1]
    tokens = jnp.concatenate([batch.prompt_ids_NxP, batch.completion_ids_NxC], axis=1)
    lengths = batch.prompt_mask_NxP.sum(axis=1, keepdims=True).astype(jnp.int32)
    positions = jnp.concatenate([prompt_positions(batch.prompt_mask_NxP), lengths + jnp.arange(c)], axis=1)
    key_valid = jnp.concatenate([batch.prompt_mask_NxP, jnp.ones_like(batch.completion_ids_NxC)], axis=1)
    return tokens, positions, key_valid


def phase_functions(loop: GRPOLoop, group: int):
    """Jitted pieces of the update, each the trainer's own code path cut at a phase boundary (each group's
    prompt forwarded once where the trainer does, `group` > 1)."""
    model, temperature = loop.model, loop.config.rollout.temperature
    train, rows_per_prompt = loop.config.train, loop.config.rollout.group_size  # the loop's rows, grouped

    def logits_fn(params, batch):
        c = batch.completion_ids_NxC.shape[1]
        if group > 1:
            return shared_prompt_logits(model, params, batch.prompt_ids_NxP, batch.prompt_mask_NxP,
                                         batch.completion_ids_NxC, group)
        logits, _ = model.apply({"params": params}, *model_inputs(batch), logits_last_n=c, logits_skip_last=1)
        return logits

    def loss_from_logits(logits, batch):
        logps, entropy = token_logps_and_entropy(logits, batch.completion_ids_NxC, temperature)
        per_token, _ = per_token_loss(logps, jax.lax.stop_gradient(logps), batch.advantages_N, batch.ref_logps_NxC,
                                      batch.rollout_logps_NxC, batch.completion_mask_NxC, train)
        weights = token_weights(batch.loss_mask_NxC, train.loss_type)
        return jnp.sum(per_token * weights) + 0.0 * jnp.sum(jax.lax.stop_gradient(entropy))

    def loss_fn(params, batch):
        return loss_from_logits(logits_fn(params, batch), batch)

    def optimizer_fn(grads, opt_state, params):
        updates, opt_state = loop.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @functools.partial(jax.jit, static_argnames="new_tokens")
    def prefill_fn(params, ids, mask, new_tokens):
        """The built-in sampler's prefill, of one row per group, as it runs it."""
        if not model.scan_layers:
            params = unstack_layers(params)
        return prefill(model, params, ids[::rows_per_prompt], mask[::rows_per_prompt], new_tokens, rows_per_prompt)

    return {"forward": jax.jit(logits_fn), "log_probs": jax.jit(loss_from_logits),
            "forward_and_backward": jax.jit(jax.grad(loss_fn)), "optimizer": jax.jit(optimizer_fn),
            "prefill": prefill_fn}


def floors(loop: GRPOLoop, group: int, peak: float, bandwidth: float) -> dict[str, float]:
    """Each phase's floor for the work the trainer does: with `group` > 1 each group's prompt counted once."""
    c, cfg = loop.config, loop.model.config
    rows, p, new = c.rows, c.rollout.prompt_length, c.rollout.max_new_tokens
    forward = update_flops(cfg, rows, p, new, 1, group)
    params = cfg.num_params()
    layers_kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
    decode_bytes = 4 * (params + rows * (p + new) * layers_kv)
    decode_flops = rows * (2 * params + 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * (p + new))
    prompts = rows // c.rollout.group_size
    prefill_flops = update_flops(cfg, prompts, p, 0, 1) - prompts * 2 * cfg.hidden_size * cfg.vocab_size
    return {"prefill": prefill_flops / peak, "decode": new * max(decode_bytes / bandwidth, decode_flops / peak),
            "forward": forward / peak, "backward": 2 * forward / peak, "optimizer": 7 * 4 * params / bandwidth}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gsm8k-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "tests" / "trainer" / "data" / "gsm8k")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    prepare(workdir, args.gsm8k_dir, workload.STEPS)
    config = load_config(None, environ={}, sets=workload_sets(workdir, 100, str(workdir / "out")) + args.set)
    runtime = start(config)
    config = resolve_auto_values(config, runtime, workdir / "model")
    loop = GRPOLoop(config, runtime, workdir / "model", out=lambda line: None)
    loop.backend.push_weights(loop.state.params)
    with StopSignal() as stop:
        step = loop.train_one_step(0, stop)  # compiles the sampler and the train step
        steps = [loop.train_one_step(i, stop) for i in range(1, args.repeats + 1)]
    fastest = min(steps, key=lambda m: m["time/step_s"])
    step_s = fastest["time/step_s"]
    group = trainer_prompt_group(loop)
    fns, r = phase_functions(loop, group), args.repeats
    problems = loop.problems_of_this_process(loop.stream.next_batch(config.rollout.batch_size))
    ids, mask = loop.encode(problems)
    rollout = loop.backend.generate(ids, mask, loop.sampling, seed=0)
    seconds = {"step": step_s, "rollout": best(lambda: loop.backend.generate(ids, mask, loop.sampling, seed=0), r)}
    params = loop.state.params
    new_tokens = config.rollout.max_new_tokens
    seconds["prefill"] = best(lambda: jax.block_until_ready(fns["prefill"](params, ids, mask, new_tokens)), r)
    seconds["decode"] = seconds["rollout"] - seconds["prefill"]

    def reward():
        _, rewards = loop.score(rollout, problems)
        advantages = group_advantages(rewards, config.rollout.group_size, config.train.scale_rewards)
        return jax.block_until_ready(loop.train_batch(ids, mask, rollout, advantages, rewards))

    seconds["reward"] = best(reward, r)
    batch = reward()
    grads = fns["forward_and_backward"](params, batch)
    opt_state = loop.state.opt_state
    for name in ("forward", "forward_and_backward"):
        seconds[name] = best(lambda n=name: jax.block_until_ready(fns[n](params, batch)), r)
    logits = fns["forward"](params, batch)
    seconds["log_probs"] = best(lambda: jax.block_until_ready(fns["log_probs"](logits, batch)), r)
    seconds["optimizer"] = best(lambda: jax.block_until_ready(fns["optimizer"](grads, opt_state, params)), r)
    seconds["update"] = best(lambda: loop.update(batch), r)  # the real jitted step (state donated)
    logps_args = (batch.prompt_ids_NxP, batch.prompt_mask_NxP, batch.completion_ids_NxC)
    seconds["old_logps_pass"] = best(lambda: jax.block_until_ready(
        loop.logps_fn(loop.state.params, *logps_args, prompt_group=batch.prompt_group)), r)
    seconds["weight_push"] = best(lambda: loop.backend.push_weights(loop.state.params), r)
    seconds["backward"] = seconds["forward_and_backward"] - seconds["forward"] - seconds["log_probs"]
    seconds["update_remainder"] = seconds["update"] - seconds["forward_and_backward"] - seconds["optimizer"]
    # From the fastest step's own timings: what the loop spends outside generate, update and push.
    seconds["host_between_phases"] = step_s - fastest["time/rollout_s"] - fastest["time/update_s"] - \
        fastest["time/weight_push_s"]

    peak, bandwidth = perf.matmul_peak_flops(), perf.memory_bandwidth_bytes_per_s()
    floor = floors(loop, group, peak, bandwidth)
    floor["update"] = floor["forward"] + floor["backward"] + floor["optimizer"]
    floor["old_logps_pass"] = floor["forward"]
    floor["rollout"] = floor["prefill"] + floor["decode"]
    floor["step"] = floor["update"] + floor["rollout"]
    order = ["step", "rollout", "prefill", "decode", "reward", "update", "forward", "log_probs", "backward",
             "optimizer", "update_remainder", "weight_push", "host_between_phases", "old_logps_pass"]
    print(json.dumps({
        "bench": "trainer_step_profile", "platform": runtime.platform, "params": loop.model.config.num_params(),
        "rows": config.rows, "set": args.set, "matmul_peak_gflop_per_s": peak / 1e9,
        "bandwidth_gb_per_s": bandwidth / 1e9, "loop_step0_s": step["time/step_s"],
        "phases": {name: {"s": round(seconds[name], 4), "share_of_step": round(seconds[name] / step_s, 3),
                          **({"floor_s": round(floor[name], 4), "x_floor": round(seconds[name] / floor[name], 2)}
                             if name in floor else {})} for name in order},
    }, indent=1))
    loop.backend.shutdown()


if __name__ == "__main__":
    main()

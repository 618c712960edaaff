"""One run of the workload in this trainer (`rollout.backend=jax`), through its config and loop API: the
same `load_config` / `start` / `GRPOLoop.train_one_step` the `trainer` CLI runs, with the workload as
`--set` values and the per-phase seconds every step already reports.

    .venv/bin/python bench/peers/run_trainer.py --workdir DIR --run N --out FILE [--name NAME] [--set key=value ...]

Phases: update = `time/update_s` (the jitted train step, ending with its metrics on the host), rollout =
step - update - weight push (generation, decoding, reward, advantages, the step's report).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import numpy as np
import workload

from trainer.auto_values import resolve_auto_values
from trainer.config import load_config
from trainer.loop import GRPOLoop, StopSignal
from trainer.runtime import start


def workload_sets(workdir: Path, steps: int, out_dir: str) -> list[str]:
    return [
        f"model_path={workdir / 'model'}", f"steps={steps}", f"out_dir={out_dir}", "checkpoint.resume=false",
        "data.source=gsm8k", f"data.path={workdir / 'gsm8k'}", "data.shuffle=false", "data.system_prompt=",
        f"rollout.batch_size={workload.PROMPTS_PER_STEP}", f"rollout.group_size={workload.GROUP}",
        f"rollout.prompt_length={workload.PROMPT_LEN}", f"rollout.max_new_tokens={workload.NEW_TOKENS}",
        f"rollout.temperature={workload.TEMPERATURE}", "rollout.top_k=-1", "rollout.top_p=1.0",
        "rollout.ignore_eos=true", "rollout.backend=jax",
        "train.micro_batch_size=4", "train.loss_type=grpo",  # see run.py's docstring
        "train.beta=0.0", "train.epsilon_low=0.2", "train.epsilon_high=0.2", "train.num_iterations=1",
        "train.scale_rewards=group",
        "optim.name=adamw", f"optim.learning_rate={workload.LEARNING_RATE:.1e}", "optim.warmup_steps=0",
        "optim.min_lr_ratio=1.0", "optim.weight_decay=0.0", "optim.max_grad_norm=0.0",
        f"optim.b1={workload.ADAM_B1}", f"optim.b2={workload.ADAM_B2}",
        "reward.weights={'workload:length_reward': 1.0}", "eval.every_steps=0", "wandb.mode=disabled",
    ]


def per_layer(before: dict, after: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(before, after) per parameter tensor, the scanned layers' stacked tensors split by layer, so the
    count matches a model that keeps one tensor per layer (as TRL's and tunix's do)."""
    pairs = []
    for name in before:
        leaves = zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True)
        pairs += [pair for b, a in leaves for pair in (zip(b, a, strict=True) if name == "layers" else [(b, a)])]
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--run", type=int, default=1)
    parser.add_argument("--steps", type=int, default=workload.STEPS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (experiments)")
    parser.add_argument("--name", default="trainer", help="the run's name in the JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        config = load_config(None, environ={}, sets=workload_sets(args.workdir, args.steps, out_dir) + args.set)
        runtime = start(config)
        config = resolve_auto_values(config, runtime, args.workdir / "model")
        loop = GRPOLoop(config, runtime, args.workdir / "model", out=lambda line: None)
        before = jax.device_get(loop.state.params)  # the state is donated to the update: copy it out first
        loop.backend.push_weights(loop.state.params)
        with StopSignal() as stop:
            metrics = [loop.train_one_step(step, stop) for step in range(config.steps)]
        loop.backend.shutdown()
        after = jax.device_get(loop.state.params)
    pairs = per_layer(before, after)
    changed = sum(int(np.sum(a != b)) for b, a in pairs)
    per_step = [{"step_s": m["time/step_s"], "update_s": m["time/update_s"],
                 "rollout_s": m["time/step_s"] - m["time/update_s"] - m["time/weight_push_s"]} for m in metrics]
    # Every row's generated length, from the loop's own report of the rollout mask.
    lengths = sorted({int(m["completions/min_length"]) for m in metrics} | {int(m["completions/max_length"])
                                                                              for m in metrics})
    rec = workload.record(args.name, args.run, per_step, lengths, changed / sum(b.size for b, _ in pairs),
                          sum(bool(np.any(a != b)) for b, a in pairs), len(pairs), steps=args.steps,
                          weight_push_s=[round(m["time/weight_push_s"], 4) for m in metrics])
    args.out.write_text(json.dumps(rec))


if __name__ == "__main__":
    main()

"""What a step reports: its metrics under TRL's names, the phase timers, the step line the SOP greps for,
and W&B logging that never stops a run."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from trainer.config import WandbSection


@contextlib.contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Adds the seconds the block takes to seconds[name]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


def step_metrics(update: dict[str, Any], rewards_N: np.ndarray, group_size: int, reward_means: dict[str, float],
                 reward_errors: int, lengths_N: np.ndarray, truncated_N: np.ndarray, learning_rate: float,
                 step_s: float) -> dict[str, float]:
    """One step's metrics, as floats under the names TRL logs, from the update's (float32 scalars) and every
    process's rows (rewards, completion lengths, truncation)."""
    group_std = rewards_N.reshape(-1, group_size).std(axis=1)
    metrics = {
        "loss": float(update["loss"]), "entropy": float(update["entropy"]), "grad_norm": float(update["grad_norm"]),
        "clip_ratio/low_mean": float(update["clip_low"]), "clip_ratio/high_mean": float(update["clip_high"]),
        "clip_ratio/region_mean": float(update["clip_low"] + update["clip_high"]),
        "learning_rate": learning_rate,
        "reward": float(rewards_N.mean()), "reward_std": float(rewards_N.std()),
        "frac_reward_zero_std": float((group_std == 0).mean()),
        "completions/mean_length": float(lengths_N.mean()), "completions/min_length": float(lengths_N.min()),
        "completions/max_length": float(lengths_N.max()), "completions/clipped_ratio": float(truncated_N.mean()),
        "throughput/completion_tokens_per_s": float(lengths_N.sum() / step_s),
        "reward_errors": float(reward_errors),
    }
    metrics |= {f"rewards/{name}/mean": mean for name, mean in reward_means.items()}
    if "kl" in update:
        metrics["kl"] = float(update["kl"])
    if "mismatch" in update:  # the rollout engine's log-probs against the trainer's, before the first update
        metrics |= {"rollout/logprob_mismatch_mean": float(update["mismatch"]),
                    "rollout/logprob_mismatch_max": float(update["mismatch_max"])}
    return metrics


def _no_negative_zero(value: float, digits: int) -> float:
    return round(value, digits) + 0.0  # -1e-9 would print as -0.000000


def step_line(step: int, loss: float, entropy: float, reward_mean: float, dt_s: float) -> str:
    loss, entropy, reward_mean = (_no_negative_zero(v, d) for v, d in ((loss, 6), (entropy, 4), (reward_mean, 4)))
    return f"step={step} loss={loss:.6f} entropy={entropy:.4f} reward_mean={reward_mean:.4f} dt={dt_s:.2f}s"


def print_flushed(text: str) -> None:
    """stdout goes to a file under nohup: flush so `tail` sees each line as it happens."""
    print(text, flush=True)


class WandbLogger:
    """W&B on the main process; an init failure prints one warning and the run goes on without it."""

    def __init__(self, section: WandbSection, run_config: dict[str, Any], out_dir: str, enabled: bool):
        self.run = None
        if not enabled or section.mode == "disabled":
            return
        try:
            import wandb

            wandb_dir = os.environ.get("WANDB_DIR", out_dir)
            os.makedirs(wandb_dir, exist_ok=True)
            self.run = wandb.init(project=section.project, name=section.name or None,
                                  entity=section.entity or None, mode=section.mode, dir=wandb_dir,
                                  config=run_config)
        except Exception as error:  # W&B is telemetry: a bad key or no network must not end training
            print(f"warning: W&B disabled, init failed: {type(error).__name__}: {error}", file=sys.stderr,
                  flush=True)
            self.run = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

"""The step line the SOP greps for, and W&B logging that never stops a run."""

from __future__ import annotations

import os
import sys
from typing import Any

from trainer.config import WandbSection


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

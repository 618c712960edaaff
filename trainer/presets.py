"""Named presets: overrides on top of the defaults (which are the cpu-tiny preset itself)."""

from __future__ import annotations

from trainer.config import ConfigError

GSM8K_SYSTEM_PROMPT = (
    "You are a helpful assistant. First think about the reasoning process and then give the answer. "
    "Enclose the reasoning in <think> </think> tags and the final number in <answer> </answer> tags, "
    "i.e. <think> reasoning here </think><answer> number here </answer>."
)
GSM8K_REWARDS = {"correctness": 1.0, "format": 0.5, "tag_count": 0.5}  # the upstream runner's weights

PRESETS: dict[str, dict] = {
    # The default: a tiny random model learns synthetic sums by RL alone on a 2-core CPU.
    "cpu-tiny": {},
    # The SOP's one-step smoke on a TPU VM: Qwen2.5 from MODEL_PATH, generation through sglang-jax.
    "smoke": {
        "model_path": "Qwen/Qwen2.5-7B-Instruct",
        "steps": 1,
        "out_dir": "runs/smoke",
        "model": {"param_dtype": "bfloat16", "remat": True},
        "data": {"source": "gsm8k", "system_prompt": GSM8K_SYSTEM_PROMPT},
        "rollout": {"backend": "sglang_jax", "batch_size": 1, "num_pre_q": 4, "global_length": 512,
                    "max_length_sample": 64},
        "train": {"beta": 0.0, "micro_batch_size": 4, "loss_type": "grpo", "epsilon_high": 0.3},
        "optim": {"name": "lion", "learning_rate": 1e-6, "warmup_steps": 0, "weight_decay": 0.0},
        "reward": {"weights": GSM8K_REWARDS},
    },
    # A full GSM8K run of Qwen2.5-1.5B-Instruct on one v4-8 host (4 chips, fsdp over all of them).
    "gsm8k-qwen2.5-1.5b-v4-8": {
        "model_path": "Qwen/Qwen2.5-1.5B-Instruct",
        "steps": 300,
        "out_dir": "runs/gsm8k-qwen2.5-1.5b",
        "model": {"remat": True},
        "data": {"source": "gsm8k", "system_prompt": GSM8K_SYSTEM_PROMPT},
        "rollout": {"backend": "sglang_jax", "batch_size": 32, "num_pre_q": 8, "global_length": 384,
                    "max_length_sample": 512, "temperature": 1.0},
        "train": {"loss_type": "dapo", "beta": 0.0, "micro_batch_size": 16, "epsilon_high": 0.28},
        "optim": {"name": "adamw", "learning_rate": 1e-6, "warmup_steps": 10, "weight_decay": 0.0,
                  "min_lr_ratio": 0.1},
        "reward": {"weights": GSM8K_REWARDS},
        "eval": {"every_steps": 25, "batches": 5},
        "checkpoint": {"every_steps": 50},
        "wandb": {"mode": "online"},
    },
}


def preset_overrides(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"--preset: expected one of {', '.join(PRESETS)}, received {name!r}")
    return PRESETS[name]

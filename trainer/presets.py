"""Named presets: overrides on top of the defaults (which are the cpu-tiny preset itself).

Master weights: float32 (model.param_dtype) with compute in model.dtype (bfloat16 on TPU), standard
mixed precision, wherever memory allows. bf16 master weights cannot hold small updates: an update
below half the bf16 spacing at a weight's magnitude rounds away (at |w| ~ 0.02 that is 6e-5), and the
trainer warns at start when most of them would be lost.

The `smoke` preset is the original SOP's one-step check of the whole pipeline and keeps the upstream
runner's choices, so that its step line compares with the SOP's: Qwen2.5-7B-Instruct, 1 step of
1 prompt x 4 samples, a 512-token prompt bucket, 64 new tokens, beta 0, Lion at 1e-6 with gradient
clipping at 1.0, epsilon_high 0.3, the reward weights 1 / 0.5 / 0.5 and the <think>/<answer> system
prompt. Its master weights are `auto` (trainer.model.load.master_weights_dtype): float32 where they
fit beside the co-located engine, and bfloat16, as upstream had them, where they do not, which is
the SOP's own case: float32 state for 7B with Lion takes about 28 GiB of a v4 chip's 32 before the
engine's 3.6 GiB of weights and its KV pool (the upstream SOP ran out of HBM co-locating them even
in bfloat16). There its one update is nearly all rounded away and the start-up warning says so; the
step's loss, entropy and rewards, which the SOP checks, are computed before the update. It departs
from upstream in one way: loss_type grpo, whose loss reads 0 at one update per batch whatever the
completion lengths, as the SOP's expected step line shows (upstream's token-level normalisation,
`dapo` here, reads 0 only when all completions have the same length).
"""

from __future__ import annotations

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
        # bfloat16 master weights for 7B on a v4-8 (see the docstring); scan over layers, as a TPU wants
        "model": {"param_dtype": "auto", "remat": True, "layer_loop": "scan"},
        "data": {"source": "gsm8k", "system_prompt": GSM8K_SYSTEM_PROMPT},
        "rollout": {"backend": "sglang_jax", "batch_size": 1, "group_size": 4, "prompt_length": 512,
                    "max_new_tokens": 64},
        "train": {"beta": 0.0, "micro_batch_size": 4, "loss_type": "grpo", "epsilon_high": 0.3},
        "optim": {"name": "lion", "learning_rate": 1e-6, "warmup_steps": 0, "weight_decay": 0.0},
        "reward": {"weights": GSM8K_REWARDS},
    },
    # A full GSM8K run of Qwen2.5-1.5B-Instruct on one v4-8 host (4 chips, fsdp over all of them).
    "gsm8k-qwen2.5-1.5b-v4-8": {
        "model_path": "Qwen/Qwen2.5-1.5B-Instruct",
        "steps": 300,
        "out_dir": "runs/gsm8k-qwen2.5-1.5b",
        "model": {"remat": True, "layer_loop": "scan"},  # a TPU's choice (trainer/model/load.py)
        "data": {"source": "gsm8k", "system_prompt": GSM8K_SYSTEM_PROMPT},
        "rollout": {"backend": "sglang_jax", "batch_size": 32, "group_size": 8, "prompt_length": 384,
                    "max_new_tokens": 512, "temperature": 1.0},
        "train": {"loss_type": "dapo", "beta": 0.0, "micro_batch_size": 16, "epsilon_high": 0.28},
        "optim": {"name": "adamw", "learning_rate": 1e-6, "warmup_steps": 10, "weight_decay": 0.0,
                  "min_lr_ratio": 0.1},
        "reward": {"weights": GSM8K_REWARDS},
        "eval": {"every_steps": 25, "batches": 5},
        "checkpoint": {"every_steps": 50},
        "wandb": {"mode": "online"},
    },
}

"""One TRL run of the workload (trl 1.16, transformers 5, torch CPU), through GRPOTrainer / GRPOConfig.

    .bench-envs/trl/bin/python bench/peers/run_trl.py --workdir DIR --run N --out FILE [--pad longest]

Timing: a callback marks each optimizer step (on_step_begin .. on_step_end); the rollout is TRL's own
`_generate_and_score_completions` (generation, decoding, reward, advantages), timed by a subclass that
only wraps it; update = step - rollout (forward, backward, AdamW step, the Trainer's bookkeeping).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import workload
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer


def reward(completions, **kwargs) -> list[float]:
    return [workload.length_reward(c[0]["content"]) for c in completions]


class TimedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with its rollout timed and what it generated kept for the checks."""

    rollouts: list[dict]

    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        self.rollouts.append({"seconds": time.perf_counter() - start,
                              "lengths": out["completion_mask"].sum(dim=1).tolist(),
                              "prompt_width": int(out["prompt_ids"].shape[1])})
        return out


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def grpo_config(output_dir: str, steps: int, pad: str) -> GRPOConfig:
    return GRPOConfig(
        output_dir=output_dir, use_cpu=True, report_to="none", save_strategy="no", logging_steps=10**6,
        max_steps=steps, seed=0, shuffle_dataset=False, dataloader_num_workers=0,
        per_device_train_batch_size=workload.PROMPTS_PER_STEP * workload.GROUP, gradient_accumulation_steps=1,
        num_generations=workload.GROUP, max_completion_length=workload.NEW_TOKENS,
        # min_new_tokens masks every EOS id out of sampling until 64 tokens exist: no completion ends early.
        generation_kwargs={"min_new_tokens": workload.NEW_TOKENS},
        temperature=workload.TEMPERATURE, top_p=1.0, top_k=0,
        # 64 rounds every prompt batch (longest prompt 65..128 tokens) up to 128 and leaves completions at 64.
        pad_to_multiple_of=64 if pad == "fixed" else None,
        learning_rate=workload.LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=workload.ADAM_B1, adam_beta2=workload.ADAM_B2, adam_epsilon=workload.ADAM_EPS,
        optim="adamw_torch", max_grad_norm=0.0,
        beta=0.0, loss_type="grpo", epsilon=0.2, num_iterations=1, scale_rewards="group")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--run", type=int, default=1)
    parser.add_argument("--steps", type=int, default=workload.STEPS)
    parser.add_argument("--pad", choices=["fixed", "longest"], default="fixed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = str(args.workdir / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = workload.read_prompts(args.workdir)
    for p in prompts:  # the same prompt tokens as the other two trainers
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p["question"]}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        if list(ids) != p["ids"]:
            raise SystemExit(f"trl: the chat template gives other token ids than the harness for {p['question'][:40]!r}")
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p["question"]}]} for p in prompts])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = TimedGRPOTrainer(model=model, reward_funcs=reward, args=grpo_config(output_dir, args.steps, args.pad),
                                   train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
        trainer.rollouts = []
        trainer.train()
    after = dict(model.named_parameters())
    changed = sum(int((after[n] != before[n]).sum()) for n in before)
    moved = sum(bool((after[n] != before[n]).any()) for n in before)
    steps = [{"step_s": s, "rollout_s": r["seconds"], "update_s": s - r["seconds"]}
             for s, r in zip(timer.seconds, trainer.rollouts, strict=True)]
    rec = workload.record("trl" if args.pad == "fixed" else "trl_longest", args.run, steps,
                          [n for r in trainer.rollouts for n in r["lengths"]],
                          changed / sum(p.numel() for p in before.values()), moved, len(before),
                          steps=args.steps, prompt_widths=sorted({r["prompt_width"] for r in trainer.rollouts}),
                          torch_threads=torch.get_num_threads())
    args.out.write_text(json.dumps(rec))


if __name__ == "__main__":
    main()

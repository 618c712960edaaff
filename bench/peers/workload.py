"""The workload every trainer of the peer benchmark runs, and the checks and summary of its results.

Standard library only: the TRL runner imports it under Python 3.11 without jax, the tunix runner
under its own Python 3.12 environment, this trainer's runner from the project's environment.

A step: 4 prompts x 4 completions of exactly 64 new tokens at temperature 1, a trivial reward
(`length_reward`), group advantages, one AdamW update (lr 1e-6, betas 0.9 / 0.999, eps 1e-8, no
clipping, no weight decay, constant learning rate), beta 0, loss_type grpo.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

MODEL = {"vocab_size": 4096, "hidden_size": 256, "intermediate_size": 768, "num_layers": 4, "num_heads": 4,
         "num_kv_heads": 2, "head_dim": 128}
PROMPTS_PER_STEP = 4
GROUP = 4
NEW_TOKENS = 64
PROMPT_LEN = 128
# Prompts longer than half the bucket: the longest prompt of every batch then rounds up to 128 in TRL
# too (pad_to_multiple_of=64), so all three see [16, 128] prompts and [16, 64] completions.
MIN_PROMPT_TOKENS = PROMPT_LEN // 2 + 1
LEARNING_RATE = 1e-6
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
TEMPERATURE = 1.0
STEPS = 6
FIRST_MEASURED_STEP = 2  # step 1 compiles (JAX) or warms caches (torch): the table is the median of steps 2..STEPS
PHASES = ("step_s", "rollout_s", "update_s")


def length_reward(completion: str, gold: str = "") -> float:
    """The workload's reward: cheap, deterministic, and different between most completions."""
    return len(completion) % 7 / 7


def read_prompts(workdir: Path) -> list[dict]:
    """The prompts the harness chose, in order: question, answer, chat text and its token ids."""
    lines = (Path(workdir) / "gsm8k" / "train.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def record(trainer: str, run: int, per_step: list[dict], tokens_per_completion: list[int], params_changed: float,
           tensors_moved: int, tensors: int, **extra) -> dict:
    """One run's JSON line: per-step phase seconds, generated lengths, what the updates changed."""
    return {"trainer": trainer, "run": run, **{phase: [round(s[phase], 4) for s in per_step] for phase in PHASES},
            "tokens_per_completion": sorted(set(tokens_per_completion)), "params_changed_fraction": params_changed,
            "tensors_moved": tensors_moved, "tensors": tensors, **extra}


def problems(rec: dict) -> list[str]:
    """Why a run does not count: a completion that is not exactly NEW_TOKENS long, a tensor no update moved,
    a missing step."""
    found = []
    if rec["tokens_per_completion"] != [NEW_TOKENS]:
        found.append(f"tokens per completion {rec['tokens_per_completion']}, expected exactly [{NEW_TOKENS}]")
    if rec["tensors_moved"] != rec["tensors"]:
        found.append(f"{rec['tensors'] - rec['tensors_moved']} of {rec['tensors']} parameter tensors did not move")
    if any(len(rec[phase]) != rec.get("steps", STEPS) for phase in PHASES):
        found.append(f"expected {rec.get('steps', STEPS)} steps, got {[len(rec[p]) for p in PHASES]}")
    return found


def phase_table(records: list[dict], statistic=statistics.median,
                first_step: int = FIRST_MEASURED_STEP) -> dict[str, dict[str, float]]:
    """trainer -> phase -> statistic (median by default) over every run's steps first_step.. (1-based)."""
    table: dict[str, dict[str, float]] = {}
    for trainer in dict.fromkeys(rec["trainer"] for rec in records):
        mine = [rec for rec in records if rec["trainer"] == trainer]
        table[trainer] = {phase: statistic([s for rec in mine for s in rec[phase][first_step - 1:]])
                          for phase in PHASES}
    return table


def ratios_to_best_peer(table: dict[str, dict[str, float]], ours: str, peers: list[str]) -> dict[str, float]:
    """ours / the fastest peer, phase by phase (the fastest peer of each phase)."""
    present = [p for p in peers if p in table]
    if ours not in table or not present:
        return {}
    return {phase: table[ours][phase] / min(table[p][phase] for p in present) for phase in PHASES}


def format_table(table: dict[str, dict[str, float]], ratios: dict[str, float], ours: str) -> str:
    lines = [f"{'trainer':<14}" + "".join(f"{phase:>12}" for phase in PHASES)]
    lines += [f"{name:<14}" + "".join(f"{row[phase]:>12.3f}" for phase in PHASES) for name, row in table.items()]
    if ratios:
        lines.append(f"{ours + ' / best':<14}" + "".join(f"{ratios[phase]:>11.2f}x" for phase in PHASES))
    return "\n".join(lines)

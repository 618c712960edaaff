"""The problems: GSM8K (hub or local jsonl/parquet) or the synthetic arithmetic task, as `data.source`
names, and the prompt stream over them.

The stream is a seeded permutation per epoch, so a (seed, position) pair is all a checkpoint
needs to resume exactly where the data left off.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np

from trainer.config import TrainerConfig

GSM8K_HUB_NAME = ("openai/gsm8k", "main")


@dataclasses.dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the gold final answer, e.g. "72"


def gold_answer(solution: str) -> str:
    """GSM8K's final answer: the text after the last '####', without commas or spaces."""
    if "####" not in solution:
        raise ValueError(f"GSM8K solution has no '####': {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def _rows_from_dir(path: Path, split: str) -> list[dict]:
    jsonl = sorted(path.glob(f"{split}*.jsonl")) + sorted(path.glob(f"*/{split}*.jsonl"))
    if jsonl:
        return [json.loads(line) for f in jsonl for line in f.read_text().splitlines() if line.strip()]
    parquet = sorted(path.glob(f"{split}*.parquet")) + sorted(path.glob(f"*/{split}*.parquet"))
    if parquet:
        import datasets

        return list(datasets.load_dataset("parquet", data_files=[str(p) for p in parquet], split="train"))
    raise FileNotFoundError(f"data.path {path}: no {split}*.jsonl or {split}*.parquet files")


def load_gsm8k(split: str, path: str = "") -> list[Problem]:
    """GSM8K from a local folder of jsonl/parquet files, or from the hub when path is empty."""
    if path:
        rows = _rows_from_dir(Path(path), split)
    else:
        import datasets

        rows = list(datasets.load_dataset(*GSM8K_HUB_NAME, split=split))
    return [Problem(row["question"], gold_answer(row["answer"])) for row in rows]


def load_problems(config: TrainerConfig, split: str) -> list[Problem]:
    """The split of the config's data source (a synthetic test split holds at least one step's rows)."""
    match config.data.source:
        case "synthetic_arithmetic":
            size = config.data.synthetic_size if split == "train" else max(config.rows, 64)
            return synthetic_arithmetic(split, size, config.data.synthetic_max_operand, config.seed)
        case "gsm8k":
            return load_gsm8k(split, config.data.path)
    raise ValueError(f"data.source: expected synthetic_arithmetic or gsm8k, received {config.data.source!r}")


def synthetic_arithmetic(split: str, count: int, max_operand: int, seed: int) -> list[Problem]:
    """Single-operation sums a tiny random model can learn by RL alone; answers in GSM8K's form."""
    rng = random.Random(f"{seed}-{split}")
    problems = []
    for _ in range(count):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        problems.append(Problem(f"What is {a} + {b}?", str(a + b)))
    return problems


class PromptStream:
    """Batches of problems in a seeded, per-epoch shuffled order; `position` counts problems served."""

    def __init__(self, problems: list[Problem], seed: int, shuffle: bool, position: int = 0):
        if not problems:
            raise ValueError("the training split holds no problems")
        self.problems = problems
        self.seed = seed
        self.shuffle = shuffle
        self.position = position
        self._cached_order: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached_order is None or self._cached_order[0] != epoch:
            n = len(self.problems)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._cached_order = (epoch, order)
        return self._cached_order[1]

    def next_batch(self, size: int) -> list[Problem]:
        batch = []
        for _ in range(size):
            epoch, offset = divmod(self.position, len(self.problems))
            batch.append(self.problems[int(self._order(epoch)[offset])])
            self.position += 1
        return batch


def left_pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, length] token ids right-aligned, and the mask of real tokens."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"prompt of {len(row)} tokens does not fit rollout.prompt_length={length}")
        if row:
            ids[i, -len(row):] = row
            mask[i, -len(row):] = 1
    return ids, mask


def fitting_problems(problems: list[Problem], prompt_ids, length: int) -> tuple[list[Problem], int]:
    """The problems whose chat prompt fits the prompt bucket, and how many were dropped."""
    kept = [p for p in problems if len(prompt_ids(p.question)) <= length]
    return kept, len(problems) - len(kept)

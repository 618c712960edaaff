"""The GRPO step of this trainer against TRL and tunix on one workload, interleaved, in one run (issue 12).

    make bench-peers                    # or: .venv/bin/python bench/peers/run.py [--runs 3] [--steps 6]
    GSM8K_DIR=/path/to/gsm8k make bench-peers

It builds (or reuses) the peers' virtual environments (bench/peers/envs.py), writes one model folder
and one prompt file, then runs TRL, tunix and this trainer one after the other, N times, rotating the
order each round, each run in its own process. Every run prints one JSON line; at the end a table of
the medians of steps 2..6 over all runs and this trainer's ratio to the fastest peer, and the same for
the fastest step (on a shared machine, the step least disturbed by other processes). A run that did
not generate exactly 64 tokens per completion, or left a parameter tensor unmoved, fails the benchmark.

The workload (bench/peers/workload.py): a random-weight Qwen2 (4 layers, hidden 256, MLP 768, 4 query /
2 KV heads, head_dim 128, vocab 4096, tied embeddings, float32; the factory in
trainer/testing/make_tiny_model.py, whose BPE tokenizer holds 417 tokens), GSM8K train prompts as a
ChatML user turn of 65..128 tokens left-padded to 128, 4 prompts x 4 completions of exactly 64 new
tokens at temperature 1, reward len(text) % 7 / 7, one AdamW update (lr 1e-6, no clipping, no weight
decay), beta 0, loss_type grpo. The prompts are the first GSM8K train questions that fit, in file order,
the same for all three; GSM8K_DIR (or --gsm8k-dir) names a folder with train.jsonl, by default the
40-row sample in tests/trainer/data/gsm8k (prompts then repeat; the shapes, which set the cost, do not
change).

Where a trainer departs from the letter of the workload, and why:
- TRL, "EOS never ends a completion": min_new_tokens=64 masks the EOS ids out of sampling (their
  probability goes to the other tokens); tunix and this trainer sample EOS like any other token and
  keep generating (tunix: an EOS id outside the vocabulary; this trainer: rollout.ignore_eos).
- TRL, "left-padded to 128": TRL pads each batch to its longest prompt. pad_to_multiple_of=64 with
  prompts of 65..128 tokens gives every batch exactly 128 (and leaves the 64-token completions alone);
  `trl_longest` is TRL's default padding, shown for reference and left out of the ratios.
- TRL's update also computes the per-token entropy (as this trainer does) through transformers' fused
  log-prob head; tunix computes no entropy.
- tunix masks every completion token equal to the pad id (0) out of the loss (its completion mask is
  `ids != pad`); a random model samples it about once in 4,096 tokens. The generated length checked here
  is the sampler's own output length.
- tunix's reward sees the text its tokenizer adapter decodes (special tokens kept); TRL and this
  trainer skip special tokens. The reward values differ, the cost does not.
- TRL runs with OMP_WAIT_POLICY=PASSIVE. torch's OpenMP threads spin while they wait, and on a 2-core
  machine shared with other processes that turns any contention into a collapse: alternating TRL runs
  under the same load took 16-41 s a step with the default policy and 4.5-5.9 s with PASSIVE. The
  setting is passed to every trainer (JAX does not use OpenMP).
- This trainer accumulates the update's gradient over micro-batches of 4 rows (train.micro_batch_size=4;
  the same update, exactly: tests/trainer/test_trainer_train_step.py), which keeps the backward's working
  set in the CPU's caches; TRL and tunix take their 16 rows at once (TRL could accumulate too, with
  gradient_accumulation_steps=4 and per_device_train_batch_size=4; not measured). `trainer_plain` is this
  trainer as issue 12 found it (scanned layers, Gumbel-max, one micro-batch of 16), for reference.
- This trainer forwards each group's prompt once, where the four rows of a group share it: the sampler
  prefills 4 prompts instead of 16 rows, and the update runs each prompt's 128 positions once, its four
  completions attending to that forward's keys and values (the gradient is the same sum;
  tests/trainer/test_trainer_shared_prompt.py). TRL and tunix forward every row whole. The values are
  the same; this trainer does not compute the prompt's four times. `trainer_plain` shares the prefill only
  (its scanned layers forward whole rows in the update).
- Phases: "rollout" is generation + decoding + reward + advantages, timed around each trainer's own
  method (TRL `_generate_and_score_completions`, tunix `_generate_and_compute_advantage`; this
  trainer: step - update - weight push); "update" is the rest of the step for TRL (step - rollout),
  the actor update for tunix (`RLCluster.update_actor`), the jitted train step for this trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import workload
from envs import DEFAULT_ROOT, REPO, ensure_env

HERE = Path(__file__).resolve().parent
# name -> (environment or None for this project's, runner script, extra arguments)
TRAINERS = {
    "trl": ("trl", "run_trl.py", []),
    "tunix": ("tunix", "run_tunix.py", []),
    "trainer": (None, "run_trainer.py", []),
    "trl_longest": ("trl", "run_trl.py", ["--pad", "longest"]),
    # Issue 12's starting point: scanned layers, Gumbel-max draws, the update in one micro-batch of 16 rows.
    "trainer_plain": (None, "run_trainer.py", ["--name", "trainer_plain", "--set", "model.layer_loop=scan",
                                               "--set", "rollout.sampling_method=gumbel",
                                               "--set", "train.micro_batch_size=16"]),
}
PEERS = ["trl", "tunix"]  # trl_longest and trainer_plain are shown, but are not peers
OURS = "trainer"


def write_model(workdir: Path) -> Path:
    from trainer.testing.make_tiny_model import make_tiny_model

    m = workload.MODEL
    return make_tiny_model(workdir / "model", seed=0, vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
                           intermediate_size=m["intermediate_size"], num_layers=m["num_layers"],
                           num_heads=m["num_heads"], num_kv_heads=m["num_kv_heads"], head_dim=m["head_dim"])


def choose_prompts(gsm8k_dir: Path, model_dir: Path, count: int) -> list[dict]:
    """The first `count` GSM8K train rows whose chat prompt has MIN_PROMPT_TOKENS..PROMPT_LEN tokens,
    repeated in order when the file holds fewer."""
    from trainer.model.tokenizer import ChatTokenizer

    tokenizer = ChatTokenizer(model_dir)
    rows = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines() if line.strip()]
    fitting = []
    for row in rows:
        ids = tokenizer.prompt_ids(row["question"], "")
        if workload.MIN_PROMPT_TOKENS <= len(ids) <= workload.PROMPT_LEN:
            fitting.append({"question": row["question"], "answer": row["answer"], "ids": ids})
    if not fitting:
        raise SystemExit(f"peers: no GSM8K train prompt of {workload.MIN_PROMPT_TOKENS}..{workload.PROMPT_LEN} "
                         f"tokens in {gsm8k_dir}")
    return [fitting[i % len(fitting)] for i in range(count)]


def prepare(workdir: Path, gsm8k_dir: Path, steps: int) -> None:
    model_dir = write_model(workdir)
    prompts = choose_prompts(gsm8k_dir, model_dir, steps * workload.PROMPTS_PER_STEP)
    (workdir / "gsm8k").mkdir(exist_ok=True)
    (workdir / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))


def run_one(name: str, python: Path, workdir: Path, run: int, steps: int) -> dict:
    _, script, extra = TRAINERS[name]
    out = workdir / f"{name}-{run}.json"
    log = workdir / f"{name}-{run}.log"
    # OMP_WAIT_POLICY=PASSIVE: see the module docstring (torch's OpenMP threads; JAX does not use OpenMP).
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled", PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    with open(log, "w") as log_file:
        done = subprocess.run([str(python), str(HERE / script), "--workdir", str(workdir), "--run", str(run),
                               "--steps", str(steps), "--out", str(out), *extra],
                              stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if done.returncode or not out.exists():
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"peers: {name} run {run} failed (exit {done.returncode}); the end of {log}:\n{tail}")
    return json.loads(out.read_text())


def run_interleaved(names: list[str], pythons: dict[str, Path], workdir: Path, runs: int, steps: int) -> list[dict]:
    """Every trainer once per round, the order rotated each round; stops at the first run that fails a check."""
    records = []
    for run in range(1, runs + 1):
        shift = (run - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            rec = run_one(name, pythons[name], workdir, run, steps)
            print(json.dumps(rec), flush=True)
            found = workload.problems(rec)
            if found:
                raise SystemExit(f"peers: {name} run {run} does not do the workload: " + "; ".join(found))
            records.append(rec)
    return records


def print_summary(records: list[dict], runs: int, steps: int) -> None:
    summary = {"bench": "peers", "runs": runs, "steps": steps}
    for label, statistic in (("median", statistics.median), ("fastest", min)):
        table = workload.phase_table(records, statistic)
        ratios = workload.ratios_to_best_peer(table, OURS, PEERS)
        print(f"\n{label} of steps {workload.FIRST_MEASURED_STEP}..{steps} over {runs} interleaved runs (s):")
        print(workload.format_table(table, ratios, OURS))
        summary |= {f"{label}_s": table, f"{label}_ratio_to_best_peer": ratios}
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=workload.STEPS)
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated, of " + ", ".join(TRAINERS))
    parser.add_argument("--gsm8k-dir", type=Path,
                        default=Path(os.environ.get("GSM8K_DIR") or REPO / "tests" / "trainer" / "data" / "gsm8k"))
    parser.add_argument("--envs-root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--workdir", type=Path, help="model, prompts, per-run logs (default: a temporary folder, "
                                                     "removed after a successful run)")
    args = parser.parse_args()
    names = [n for n in args.trainers.split(",") if n]
    unknown = [n for n in names if n not in TRAINERS]
    if unknown or args.runs < 1 or args.steps < workload.FIRST_MEASURED_STEP:
        parser.error(f"--trainers: expected some of {', '.join(TRAINERS)}, --runs >= 1, "
                     f"--steps >= {workload.FIRST_MEASURED_STEP}; received {args.trainers}, {args.runs}, {args.steps}")
    pythons = {n: Path(sys.executable) if TRAINERS[n][0] is None else ensure_env(TRAINERS[n][0], args.envs_root)
               for n in names}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-peers-"))  # kept on failure, for the logs
    workdir.mkdir(parents=True, exist_ok=True)
    prepare(workdir, args.gsm8k_dir, args.steps)
    print_summary(run_interleaved(names, pythons, workdir, args.runs, args.steps), args.runs, args.steps)
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()

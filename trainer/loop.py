"""The GRPO loop, top-down: `train` sets a run up; each step is rollout -> rewards -> advantages -> update ->
weight push -> metrics, then evaluation, W&B and metrics.jsonl, checkpoint, and a SIGTERM check.

How it departs from the GRPO paper (DeepSeekMath, Shao et al. 2024):
- Normalisation follows train.loss_type: `grpo` is the paper's 1/G sum_i 1/|o_i| sum_t, except that
  G counts the rows with tokens in the loss, where TRL divides by all rows (so rows dropped by dynamic
  sampling or mask_truncated_completions do not dilute the rest); the default `dapo` averages over
  every loss token of the batch (DAPO); `dr_grpo` divides by rows x max new tokens (Dr. GRPO).
- Clipping is asymmetric (epsilon_low / epsilon_high, DAPO's clip-higher); the paper has one epsilon.
- The KL penalty is added to the loss only when beta > 0. The default beta is 0 (DAPO, Dr. GRPO),
  which also skips the reference model. Its default estimator k3 has the paper's value but the
  gradient of k2, whose expectation is the KL's gradient: k3 differentiated as written has the
  gradient of KL(pi_ref || pi) instead (trainer/losses.py). k1 is not offered: its expected gradient is 0.
- Advantages divide by the group's population std + 1e-4, by the batch std, or not at all (Dr. GRPO).
- Dynamic sampling (DAPO) zero-weights groups whose rewards are all equal instead of drawing more
  prompts to refill the batch, so every step keeps its compiled shapes.
- One update per rollout batch by default (mu = 1): pi_old is the detached current policy, as in TRL,
  so the ratio is exactly 1 and the gradient is the policy gradient. The loss value is then minus the
  token-weighted mean advantage (plus beta KL): 0 for `grpo` when every row of a group counts in the
  loss (a group's advantages sum to 0 and each row weighs the same), but not for the default `dapo` or
  for `dr_grpo`, which weigh rows by their lengths (trl#2703's "the loss reads 0" is this `grpo` case).
- Only with num_iterations > 1 or importance_sampling_cap > 0 does a separate forward compute pi_old
  before the first update (otherwise a second, separately compiled forward could differ from the
  update's own in bf16 and clip tokens for nothing). Old log-probs come from the trainer, never the
  rollout engine. The engine's log-probs give the logged rollout/trainer mismatch (against the first
  update's forward) and, with importance_sampling_cap > 0, a truncated importance weight
  min(pi_old / pi_rollout, cap) per token.
- Entropy, clip ratios, KL and the mismatch are means over every generated token, whether or not it
  counts in the loss, so a step whose groups all drop out still describes the policy.
- Rewards are outcome rewards (correctness, format, tag count, or a function of your own); no reward model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from trainer import sharding
from trainer.advantages import group_advantages, informative_rows
from trainer.auto_values import resolve_auto_values
from trainer.checkpoint import Checkpointer
from trainer.config import TrainerConfig, to_yaml
from trainer.data import PromptStream, fitting_problems, left_pad, load_problems
from trainer.evaluation import evaluate
from trainer.metrics import WandbLogger, print_flushed, step_line, step_metrics, timed
from trainer.metrics_log import MetricsLog
from trainer.model.load import build_model, resolve_model_dir
from trainer.model.tokenizer import ChatTokenizer
from trainer.rewards import RewardScores, score_completions
from trainer.rollout import RolloutBackend, RolloutOutput, make_backend
from trainer.rollout.sampling import SamplingSettings
from trainer.runtime import Runtime
from trainer.train_step import (
    TrainBatch,
    global_batch,
    init_state,
    learning_rate_schedule,
    make_logps_fn,
    make_optimizer,
    make_train_step,
    updates_lost_to_rounding,
)

BackendFactory = Callable[..., RolloutBackend]


def train(config: TrainerConfig, runtime: Runtime, backend_factory: BackendFactory = make_backend,
          out: Callable[[str], None] = print_flushed) -> None:
    """Resolve the model and the auto values, print the effective config, then run the loop."""
    model_dir = resolve_model_dir(config.model_path, config.out_dir)
    config = resolve_auto_values(config, runtime, model_dir, out)
    out(to_yaml(config).rstrip())
    GRPOLoop(config, runtime, model_dir, backend_factory, out).run()


class GRPOLoop:
    """A run: the policy and its optimizer state on the mesh, the prompt stream, the rollout backend, and
    where the loop stands (what a checkpoint saves)."""

    def __init__(self, config: TrainerConfig, runtime: Runtime, model_dir: Path,
                 backend_factory: BackendFactory = make_backend, out: Callable[[str], None] = print_flushed):
        self.config, self.runtime, self.out = config, runtime, out
        self.tokenizer = ChatTokenizer(model_dir)
        self.model, host_params = build_model(model_dir, config.model, runtime.platform)
        self.train_problems = self.problems("train")
        self.eval_problems = self.problems(config.eval.split) if config.eval.every_steps else []
        self.set_up_update(host_params)
        self.position = StepPosition(0, 0, jax.random.key(config.seed))
        self.checkpointer = Checkpointer(config.checkpoint.dir or f"{config.out_dir}/checkpoints",
                                         config.checkpoint.max_to_keep)
        if config.checkpoint.resume:
            self.resume_from_latest()
        self.warn_if_updates_round_away()
        self.stream = PromptStream(self.train_problems, config.seed, config.data.shuffle,
                                   self.position.data_position)
        r = config.rollout
        self.sampling = SamplingSettings(r.max_new_tokens, r.temperature, r.top_k, r.top_p, r.ignore_eos)
        self.backend = backend_factory(config, self.model, runtime, self.tokenizer, model_dir)

    # --- the story ---------------------------------------------------------------------------------

    def run(self) -> None:
        run_config = self.config.model_dump()
        logger = WandbLogger(self.config.wandb, run_config, self.config.out_dir, self.runtime.is_main)
        metrics_log = MetricsLog.start(self.config.out_dir, run_config, self.position.step, self.runtime.is_main)
        with contextlib.ExitStack() as stack:
            stack.callback(self.checkpointer.close)
            stack.enter_context(self.backend)
            stop = stack.enter_context(StopSignal())
            self.backend.push_weights(self.state.params)
            try:
                for step in range(self.position.step, self.config.steps):
                    metrics = self.train_one_step(step, stop)
                    self.out(step_line(step, metrics["loss"], metrics["entropy"], metrics["reward"],
                                       metrics["time/step_s"]))
                    metrics |= self.evaluate_if_due(step)
                    logger.log(metrics, step)
                    metrics_log.log(step, metrics)
                    self.checkpoint_if_due(step)
                    self.exit_if_stopped(stop)
            except BaseException:
                logger.finish(exit_code=1)
                raise
            logger.finish()

    def train_one_step(self, step: int, stop: StopSignal) -> dict[str, float]:
        """One step's rollout, rewards, advantages, update and push; its metrics. The position (step, data,
        RNG) moves only once the step is done: a SIGTERM before the update saves the position this step
        started from, all three consistent."""
        seconds: dict[str, float] = {}
        with timed(seconds, "time/step_s"):
            with timed(seconds, "time/rollout_s"):
                next_key, step_key = jax.random.split(self.position.rng_key)
                problems = self.problems_of_this_process(self.stream.next_batch(self.config.rollout.batch_size))
                prompt_ids, prompt_mask = self.encode(problems)
                rollout = self.backend.generate(prompt_ids, prompt_mask, self.sampling, seed=_seed_from(step_key))
            self.exit_if_stopped(stop)  # before the update: the saved state is the one this step started from
            scores, rewards_N = self.score(rollout, problems)
            advantages_N = group_advantages(rewards_N, self.config.rollout.group_size, self.config.train.scale_rewards)
            batch = self.train_batch(prompt_ids, prompt_mask, rollout, advantages_N, rewards_N)
            with timed(seconds, "time/update_s"):
                update = self.update(batch)
            with timed(seconds, "time/weight_push_s"):
                self.backend.push_weights(self.state.params)
            self.position = StepPosition(step + 1, self.stream.position, next_key)
        return self.step_metrics(step, update, scores, rewards_N, rollout, seconds) | seconds | self.backend.timings()

    # --- the chapters, in the order a step reaches them ---------------------------------------------

    def problems_of_this_process(self, prompts: list) -> list:
        """The problem of each of this process's rows: every prompt repeated group_size times, then this
        process's block."""
        rows = [p for p in prompts for _ in range(self.config.rollout.group_size)]
        return rows[self.runtime.this_process_rows(self.config.rows)]

    def encode(self, problems: list) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.tokenizer.prompt_ids(p.question, self.config.data.system_prompt) for p in problems]
        return left_pad(rows, self.config.rollout.prompt_length, self.tokenizer.pad_id)

    def score(self, rollout: RolloutOutput, problems: list) -> tuple[RewardScores, np.ndarray]:
        """Rewards of this process's rows, then every process's rewards gathered (group-major order)."""
        texts = self.tokenizer.decode_completions(rollout.completion_ids_NxC, rollout.completion_mask_NxC)
        scores = score_completions(texts, [p.answer for p in problems], self.config.reward.weights,
                                   self.config.reward.correctness_mode)
        return scores, sharding.gather_to_all(scores.total_N)

    def train_batch(self, prompt_ids, prompt_mask, rollout: RolloutOutput, advantages_N, rewards_N) -> TrainBatch:
        """This process's rows as one global batch; pi_old and pi_ref come in `update`, where needed."""
        rows = self.runtime.this_process_rows(self.config.rows)
        host = TrainBatch(prompt_ids, prompt_mask, rollout.completion_ids_NxC,
                          rollout.completion_mask_NxC.astype(np.float32), self.loss_mask(rollout, rewards_N, rows),
                          advantages_N[rows], rollout_logps_NxC=rollout.logps_NxC,
                          prompt_group=sharding.shared_prompt_group(prompt_ids, prompt_mask,
                                                                    self.config.rollout.group_size))
        return global_batch(host, self.runtime.mesh)

    def loss_mask(self, rollout: RolloutOutput, rewards_N: np.ndarray, rows: slice) -> np.ndarray:
        """The generated tokens that count in the loss: all, but for groups dynamic sampling drops and
        truncated completions when they are masked."""
        loss_mask = rollout.completion_mask_NxC.astype(np.float32)
        if self.config.train.dynamic_sampling:
            loss_mask *= informative_rows(rewards_N, self.config.rollout.group_size)[rows, None]
        if self.config.train.mask_truncated_completions:
            loss_mask *= (~self.truncated(rollout))[:, None]
        return loss_mask

    def truncated(self, rollout: RolloutOutput) -> np.ndarray:
        """Rows that used every new token without producing a stop token."""
        last = rollout.completion_ids_NxC[:, -1]
        return (rollout.lengths_N == self.config.rollout.max_new_tokens) & ~np.isin(last, self.tokenizer.stop_ids)

    def update(self, batch: TrainBatch) -> dict:
        """pi_old and pi_ref where needed, then num_iterations optimizer steps on one batch: the last
        step's metrics, with the rollout/trainer mismatch of the first (the policy that sampled)."""
        args = (batch.prompt_ids_NxP, batch.prompt_mask_NxP, batch.completion_ids_NxC)
        if self.use_old_logps:
            batch = batch.replace(old_logps_NxC=self.logps_fn(self.state.params, *args, prompt_group=batch.prompt_group))
        if self.ref_params is not None:
            batch = batch.replace(ref_logps_NxC=self.logps_fn(self.ref_params, *args, prompt_group=batch.prompt_group))
        steps = []
        for _ in range(self.config.train.num_iterations):
            self.state, metrics = self.train_step(self.state, batch)
            steps.append(metrics)
        first, last = jax.device_get((steps[0], steps[-1]))
        return last | {name: first[name] for name in ("mismatch", "mismatch_max") if name in first}

    def step_metrics(self, step: int, update: dict, scores: RewardScores, rewards_N: np.ndarray,
                     rollout: RolloutOutput, seconds: dict[str, float]) -> dict[str, float]:
        """The step's metrics over every process's rows."""
        return step_metrics(
            update, rewards_N, self.config.rollout.group_size,
            {name: float(sharding.gather_to_all(values).mean()) for name, values in scores.by_name.items()},
            int(sharding.gather_to_all(np.array([scores.num_errors])).sum()),
            sharding.gather_to_all(rollout.lengths_N), sharding.gather_to_all(self.truncated(rollout)),
            float(self.lr_schedule(step * self.config.train.num_iterations)), seconds["time/step_s"])

    def evaluate_if_due(self, step: int) -> dict[str, float]:
        every = self.config.eval.every_steps
        if not every or (step + 1) % every:
            return {}
        result = evaluate(self.backend, self.tokenizer, self.eval_problems, self.config, self.runtime)
        self.out(f"eval step={step} pass@1={result['eval/pass@1']:.4f} problems={int(result['eval/num_problems'])}")
        return result

    def checkpoint_if_due(self, step: int) -> None:
        every = self.config.checkpoint.every_steps
        if every and ((step + 1) % every == 0 or step + 1 == self.config.steps):
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        p = self.position
        self.checkpointer.save(p.step, self.state, p.rng_key, {"step": p.step, "data_position": p.data_position})

    def exit_if_stopped(self, stop: StopSignal) -> None:
        # All processes take the same branch: saving is collective, so one host saving while
        # another starts the next step would deadlock a pod. SIGTERM reaches hosts at different times.
        if sharding.gather_to_all(np.array([stop.requested])).any():
            self.save_checkpoint()
            self.out(f"SIGTERM: saved checkpoint {self.position.step} in {self.checkpointer.directory}; exiting")
            raise Terminated()

    # --- set-up --------------------------------------------------------------------------------------

    def problems(self, split: str) -> list:
        """The split's problems whose prompt fits rollout.prompt_length (the others are dropped, and counted)."""
        problems, dropped = fitting_problems(
            load_problems(self.config, split),
            lambda q: self.tokenizer.prompt_ids(q, self.config.data.system_prompt),
            self.config.rollout.prompt_length)
        if dropped:
            self.out(f"data: dropped {dropped} {split} problems longer than rollout.prompt_length")
        return problems

    def set_up_update(self, host_params) -> None:
        """The train state on the mesh, the optimizer and its schedule, the jitted step and log-prob forward."""
        config, mesh = self.config, self.runtime.mesh
        total_updates = config.steps * config.train.num_iterations
        self.optimizer = make_optimizer(config.optim, total_updates)
        self.lr_schedule = learning_rate_schedule(config.optim, total_updates)
        params = sharding.put_tree(host_params, sharding.tree_shardings(host_params, mesh))
        self.state, self.state_shardings = init_state(params, self.optimizer, mesh)
        self.ref_params = jax.tree.map(jnp.copy, self.state.params) if config.train.beta > 0 else None
        # At num_iterations 1 the ratio's denominator is the detached current log-prob (as in TRL): a
        # separately compiled forward could differ from it in bf16 and clip tokens for nothing.
        self.use_old_logps = config.train.num_iterations > 1 or config.train.importance_sampling_cap > 0
        self.logps_fn = make_logps_fn(self.model, mesh, config.rollout.temperature,
                                      config.rows // config.train.micro_batch_size)
        self.train_step = make_train_step(self.model, self.optimizer, config.train,
                                          config.rows // config.train.micro_batch_size, config.rollout.temperature,
                                          self.state_shardings, mesh)

    def resume_from_latest(self) -> None:
        latest = self.checkpointer.latest_step()
        if latest is None:
            return
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                self.state, self.state_shardings)
        self.state, rng_key, position = self.checkpointer.restore(latest, abstract)
        self.position = StepPosition(position["step"], position["data_position"], rng_key)
        self.out(f"resumed from checkpoint {latest} in {self.checkpointer.directory}")

    def warn_if_updates_round_away(self) -> None:
        """Say at start when most weights cannot represent a step of the learning rate's size."""
        lr, dtype = self.config.optim.learning_rate, self.config.model.param_dtype
        lost = updates_lost_to_rounding(self.state.params, lr)
        if lost <= 0.5:
            return
        advice = ("float32 master weights (model.param_dtype=float32, compute stays in model.dtype) keep them, "
                  "memory permitting" if dtype != "float32" else "raise optim.learning_rate")
        self.out(f"warning: optim.learning_rate {lr:g} is below {dtype}'s resolution at the weights' scale: an "
                 f"update that size leaves {lost:.1%} of the weights unchanged; {advice}")


@dataclasses.dataclass
class StepPosition:
    """Where the loop stands, all a checkpoint needs beside the train state."""

    step: int
    data_position: int
    rng_key: jax.Array


class Terminated(Exception):
    """SIGTERM arrived; a checkpoint was saved. The CLI exits 143."""


class StopSignal:
    """Turns SIGTERM into a flag the loop checks between phases, so a save never races an update."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)
        return False


def _seed_from(key: jax.Array) -> int:
    return int(jax.random.randint(key, (), 0, 2**31 - 1))

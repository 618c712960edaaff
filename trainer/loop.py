"""The GRPO loop: set up once, then each step rollout -> rewards -> advantages -> update -> push -> report.

How it departs from the GRPO paper (DeepSeekMath, Shao et al. 2024):
- Normalisation follows train.loss_type: `grpo` is the paper's 1/G sum_i 1/|o_i| sum_t; the default
  `dapo` averages over every completion token of the batch (DAPO); `dr_grpo` divides by rows x max
  new tokens (Dr. GRPO).
- Clipping is asymmetric (epsilon_low / epsilon_high, DAPO's clip-higher); the paper has one epsilon.
- The KL penalty (k3 as in the paper, or k1) is added to the loss only when beta > 0. The default
  beta is 0 (DAPO, Dr. GRPO), which also skips the reference model.
- Advantages divide by the group's population std + 1e-4, by the batch std, or not at all (Dr. GRPO).
- Dynamic sampling (DAPO) zero-weights groups whose rewards are all equal instead of drawing more
  prompts to refill the batch, so every step keeps its compiled shapes.
- One update per rollout batch by default (mu = 1): the ratio is exactly 1 and the loss value is 0;
  its gradient is the policy gradient. With num_iterations > 1 the trainer recomputes old log-probs
  before the first update.
- Old log-probs come from the trainer, never the rollout engine. The engine's log-probs give the
  logged rollout/trainer mismatch and, with importance_sampling_cap > 0, a truncated importance
  weight min(pi_old / pi_rollout, cap) per token.
- Rewards are outcome rewards (correctness, format, tag count); no reward model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from trainer import sharding
from trainer.advantages import group_advantages, informative_rows
from trainer.checkpoint import Checkpointer
from trainer.config import TrainerConfig, to_yaml
from trainer.data import PromptStream, fitting_problems, left_pad, load_gsm8k, synthetic_arithmetic
from trainer.evaluation import evaluate
from trainer.metrics import WandbLogger, print_flushed, step_line
from trainer.model.load import build_model, compute_dtype, resolve_model_dir
from trainer.model.qwen2 import Qwen2Config
from trainer.model.tokenizer import ChatTokenizer
from trainer.rewards import score_completions
from trainer.rollout import RolloutBackend, RolloutOutput, make_backend
from trainer.runtime import Runtime
from trainer.sampling import SamplingSettings
from trainer.train_step import (
    batch_from_host,
    init_state,
    learning_rate_schedule,
    loss_settings,
    make_logps_fn,
    make_optimizer,
    make_train_step,
)

BackendFactory = Callable[..., RolloutBackend]


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


def load_problems(config: TrainerConfig, split: str) -> list:
    if config.data.source == "synthetic_arithmetic":
        size = config.data.synthetic_size if split == "train" else max(config.rows, 64)
        return synthetic_arithmetic(split, size, config.data.synthetic_max_operand, config.seed)
    return load_gsm8k(split, config.data.path)


@dataclasses.dataclass
class StepPosition:
    """Where the loop stands, all a checkpoint needs beside the train state."""

    step: int
    data_position: int
    rng_key: jax.Array


class GRPOLoop:
    def __init__(self, config: TrainerConfig, runtime: Runtime, model_dir: Path,
                 backend_factory: BackendFactory = make_backend, out: Callable[[str], None] = print_flushed):
        self.config, self.runtime, self.model_dir, self.out = config, runtime, model_dir, out
        self.mesh = runtime.mesh
        self.tokenizer = ChatTokenizer(self.model_dir)
        self.model, host_params = build_model(self.model_dir, config.model, runtime.platform)
        self.train_problems = self._problems("train")
        self.eval_problems = self._problems(config.eval.split) if config.eval.every_steps else []
        total_updates = config.steps * config.train.num_iterations
        self.optimizer = make_optimizer(config.optim, total_updates)
        self.lr_schedule = learning_rate_schedule(config.optim, total_updates)
        params = sharding.put_tree(host_params, sharding.tree_shardings(host_params, self.mesh))
        self.state, self.state_shardings = init_state(params, self.optimizer, self.mesh)
        self.ref_params = jax.tree.map(jnp.copy, self.state.params) if config.train.beta > 0 else None
        self.position = StepPosition(0, 0, jax.random.key(config.seed))
        self.checkpointer = Checkpointer(config.checkpoint.dir or f"{config.out_dir}/checkpoints",
                                         config.checkpoint.max_to_keep)
        if config.checkpoint.resume:
            self._resume_from_latest()
        self.stream = PromptStream(self.train_problems, config.seed, config.data.shuffle,
                                   self.position.data_position)
        self.sampling = SamplingSettings(config.rollout.max_length_sample, config.rollout.temperature,
                                         config.rollout.top_k, config.rollout.top_p, config.rollout.ignore_eos)
        self.needs_old_logps = (config.train.num_iterations > 1 or config.train.importance_sampling_cap > 0
                                or config.rollout.backend == "sglang_jax")
        self.logps_fn = make_logps_fn(self.model, self.mesh, config.rollout.temperature)
        self.train_step = make_train_step(
            self.model, self.optimizer, loss_settings(config.train, config.rollout.max_length_sample),
            config.rows // config.train.micro_batch_size, config.rollout.temperature, self.needs_old_logps,
            self.state_shardings, self.mesh)
        self.backend = backend_factory(config, self.model, runtime, self.tokenizer, self.model_dir)

    # --- the story ---------------------------------------------------------------------------------

    def run(self) -> None:
        logger = WandbLogger(self.config.wandb, dataclasses.asdict(self.config), self.config.out_dir,
                             self.runtime.is_main)
        with contextlib.ExitStack() as stack:
            stack.callback(self.checkpointer.close)
            stack.enter_context(self.backend)
            stop = stack.enter_context(StopSignal())
            self.backend.push_weights(self.state.params)
            try:
                for step in range(self.position.step, self.config.steps):
                    metrics = self.train_one_step(step, stop)
                    self.evaluate_if_due(step, metrics)
                    logger.log(metrics, step)
                    self.checkpoint_if_due(step)
                    self.exit_if_stopped(stop)
            except BaseException:
                logger.finish(exit_code=1)
                raise
            logger.finish()

    def train_one_step(self, step: int, stop: StopSignal) -> dict[str, float]:
        start = time.perf_counter()
        self.position.rng_key, step_key = jax.random.split(self.position.rng_key)
        problems = self.my_rows(self.stream.next_batch(self.config.rollout.batch_size))
        prompt_ids, prompt_mask = self.encode(problems)
        rollout = self.backend.generate(prompt_ids, prompt_mask, self.sampling, seed=_seed_from(step_key))
        rollout_s = time.perf_counter() - start
        self.exit_if_stopped(stop)  # before the update: the saved state is the one this step started from
        scores, rewards_N = self.score(rollout, problems)
        advantages = group_advantages(rewards_N, self.config.rollout.num_pre_q, self.config.train.scale_rewards)
        host_batch = self.host_batch(prompt_ids, prompt_mask, rollout, advantages[self.my_slice()], rewards_N)
        update_start = time.perf_counter()
        train_metrics, mismatch = self.update(host_batch, rollout)
        update_s = time.perf_counter() - update_start
        push_start = time.perf_counter()
        self.backend.push_weights(self.state.params)
        push_s = time.perf_counter() - push_start
        self.position.step, self.position.data_position = step + 1, self.stream.position
        dt = time.perf_counter() - start
        metrics = self.report(step, train_metrics, scores, rewards_N, rollout, mismatch, dt)
        metrics |= {"time/rollout_s": rollout_s, "time/update_s": update_s, "time/weight_push_s": push_s,
                    "time/step_s": dt} | self.backend.timings()
        return metrics

    # --- the chapters ------------------------------------------------------------------------------

    def my_slice(self) -> slice:
        local = self.config.rows // self.runtime.process_count
        return slice(self.runtime.process_index * local, (self.runtime.process_index + 1) * local)

    def my_rows(self, problems: list) -> list:
        """This process's rows: each prompt repeated num_pre_q times, then split by process index."""
        rows = [p for p in problems for _ in range(self.config.rollout.num_pre_q)]
        return rows[self.my_slice()]

    def encode(self, problems: list) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.tokenizer.prompt_ids(p.question, self.config.data.system_prompt) for p in problems]
        return left_pad(rows, self.config.rollout.global_length, self.tokenizer.pad_id)

    def score(self, rollout: RolloutOutput, problems: list):
        """Rewards of this process's rows, then every process's rewards gathered (group-major order)."""
        texts = self.tokenizer.decode_completions(rollout.completion_ids_NxC, rollout.completion_mask_NxC)
        scores = score_completions(texts, [p.answer for p in problems], self.config.reward.weights,
                                   self.config.reward.correctness_mode)
        return scores, sharding.gather_to_all(scores.total_N)

    def host_batch(self, prompt_ids, prompt_mask, rollout: RolloutOutput, advantages_N, rewards_N) -> dict:
        loss_mask = rollout.completion_mask_NxC.astype(np.float32)
        if self.config.train.dynamic_sampling:
            keep = informative_rows(rewards_N, self.config.rollout.num_pre_q)[self.my_slice()]
            loss_mask *= keep[:, None]
        if self.config.train.mask_truncated_completions:
            loss_mask *= (~self.truncated(rollout))[:, None]
        zeros = np.zeros_like(loss_mask)
        rollout_logps = rollout.logprobs_NxC if rollout.logprobs_NxC is not None else zeros
        return {"prompt_ids_NxP": prompt_ids, "prompt_mask_NxP": prompt_mask,
                "completion_ids_NxC": rollout.completion_ids_NxC, "loss_mask_NxC": loss_mask,
                "advantages_N": advantages_N, "old_logps_NxC": zeros, "ref_logps_NxC": zeros,
                "rollout_logps_NxC": rollout_logps.astype(np.float32)}

    def truncated(self, rollout: RolloutOutput) -> np.ndarray:
        """Rows that used every new token without producing a stop token."""
        last = rollout.completion_ids_NxC[:, -1]
        return (rollout.lengths_N == self.config.rollout.max_length_sample) & ~np.isin(last, self.tokenizer.stop_ids)

    def update(self, host: dict, rollout: RolloutOutput):
        """Old / reference log-probs where needed, then num_iterations optimizer steps on one batch."""
        batch = batch_from_host(host, self.mesh)
        args = (batch.prompt_ids_NxP, batch.prompt_mask_NxP, batch.completion_ids_NxC)
        mismatch = None
        if self.needs_old_logps:
            batch = batch.replace(old_logps_NxC=self.logps_fn(self.state.params, *args))
            if rollout.logprobs_NxC is not None:
                mismatch = self.logprob_mismatch(batch.old_logps_NxC, rollout)
        if self.ref_params is not None:
            batch = batch.replace(ref_logps_NxC=self.logps_fn(self.ref_params, *args))
        for _ in range(self.config.train.num_iterations):
            self.state, metrics = self.train_step(self.state, batch)
        return jax.device_get(metrics), mismatch

    def logprob_mismatch(self, trainer_logps_global, rollout: RolloutOutput) -> dict[str, float]:
        """Mean and max |logp_engine - logp_trainer| over the generated tokens of all processes."""
        trainer_logps = sharding.local_rows(trainer_logps_global, self.mesh)
        mask = rollout.completion_mask_NxC.astype(bool)
        diff = np.abs(rollout.logprobs_NxC - trainer_logps)[mask]
        sums = sharding.gather_to_all(np.array([[diff.sum(), diff.size, diff.max(initial=0.0)]]))
        return {"rollout/logprob_mismatch_mean": float(sums[:, 0].sum() / max(sums[:, 1].sum(), 1)),
                "rollout/logprob_mismatch_max": float(sums[:, 2].max())}

    def report(self, step, train_metrics, scores, rewards_N, rollout: RolloutOutput, mismatch, dt) -> dict:
        lengths = sharding.gather_to_all(rollout.lengths_N)
        truncated = sharding.gather_to_all(self.truncated(rollout))
        group_std = rewards_N.reshape(-1, self.config.rollout.num_pre_q).std(axis=1)
        metrics = {
            "loss": float(train_metrics["loss"]), "entropy": float(train_metrics["entropy"]),
            "grad_norm": float(train_metrics["grad_norm"]),
            "clip_ratio/low_mean": float(train_metrics["clip_low"]),
            "clip_ratio/high_mean": float(train_metrics["clip_high"]),
            "clip_ratio/region_mean": float(train_metrics["clip_low"] + train_metrics["clip_high"]),
            "learning_rate": float(self.lr_schedule(step * self.config.train.num_iterations)),
            "reward": float(rewards_N.mean()), "reward_std": float(rewards_N.std()),
            "frac_reward_zero_std": float((group_std == 0).mean()),
            "completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()), "completions/clipped_ratio": float(truncated.mean()),
            "throughput/completion_tokens_per_s": float(lengths.sum() / dt),
            "reward_errors": float(sharding.gather_to_all(np.array([scores.num_errors])).sum()),
        }
        for name, values in scores.by_name.items():
            metrics[f"rewards/{name}/mean"] = float(sharding.gather_to_all(values).mean())
        if "kl" in train_metrics:
            metrics["kl"] = float(train_metrics["kl"])
        metrics |= mismatch or {}
        self.out(step_line(step, metrics["loss"], metrics["entropy"], metrics["reward"], dt))
        return metrics

    def evaluate_if_due(self, step: int, metrics: dict) -> None:
        every = self.config.eval.every_steps
        if not every or (step + 1) % every:
            return
        c = self.config
        result = evaluate(self.backend, self.tokenizer, self.eval_problems, rows=c.rows, batches=c.eval.batches,
                          prompt_length=c.rollout.global_length, max_new_tokens=c.rollout.max_length_sample,
                          system_prompt=c.data.system_prompt, correctness_mode=c.reward.correctness_mode,
                          process_index=self.runtime.process_index, process_count=self.runtime.process_count)
        self.out(f"eval step={step} pass@1={result['eval/pass@1']:.4f} problems={int(result['eval/num_problems'])}")
        metrics |= result

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

    def _resume_from_latest(self) -> None:
        latest = self.checkpointer.latest_step()
        if latest is None:
            return
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                self.state, self.state_shardings)
        self.state, rng_key, position = self.checkpointer.restore(latest, abstract)
        self.position = StepPosition(position["step"], position["data_position"], rng_key)
        self.out(f"resumed from checkpoint {latest} in {self.checkpointer.directory}")

    def _problems(self, split: str) -> list:
        problems, dropped = fitting_problems(
            load_problems(self.config, split),
            lambda q: self.tokenizer.prompt_ids(q, self.config.data.system_prompt),
            self.config.rollout.global_length)
        if dropped:
            self.out(f"data: dropped {dropped} {split} problems longer than rollout.global_length")
        return problems


def _seed_from(key: jax.Array) -> int:
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def resolve_auto_values(config: TrainerConfig, runtime: Runtime, model_dir: Path) -> TrainerConfig:
    """The config with `auto` / 0 values replaced by what this run will use, as the log should show."""
    dtype = jnp.dtype(compute_dtype(config.model.dtype, runtime.platform)).name
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype=dtype))
    if config.rollout.backend == "sglang_jax":
        from trainer.rollout.sglang_jax import resolve_engine_section

        engine = resolve_engine_section(config, Qwen2Config.from_dir(model_dir), runtime)
        config = dataclasses.replace(config, rollout=dataclasses.replace(config.rollout, sglang=engine))
    return config


def train(config: TrainerConfig, runtime: Runtime, backend_factory: BackendFactory = make_backend,
          out: Callable[[str], None] = print_flushed) -> None:
    """Resolve the model and the auto values, print the effective config, then run the loop."""
    model_dir = resolve_model_dir(config.model_path, config.out_dir)
    config = resolve_auto_values(config, runtime, model_dir)
    out(to_yaml(config).rstrip())
    GRPOLoop(config, runtime, model_dir, backend_factory, out).run()

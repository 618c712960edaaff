"""The jitted update: micro-batch gradient accumulation with `lax.scan`, then one optax step.

The state is donated, so parameters and optimizer moments are updated in place. Every array has a
fixed shape ([rows, prompt bucket] and [rows, new tokens]) so the step compiles once. Log-probs a
batch does not have are None, and the step is traced for the batch's structure: without old log-probs
the ratio's denominator is the detached current policy (mu = 1), without rollout log-probs there is
no mismatch to measure.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from trainer import sharding
from trainer.config import OptimSection, TrainSection
from trainer.losses import per_token_loss, token_logps_and_entropy, token_weights
from trainer.model.qwen2 import Qwen2ForCausalLM, prompt_positions, stack_layers, unstack_layers


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@flax.struct.dataclass
class TrainBatch:
    prompt_ids_NxP: jax.Array
    prompt_mask_NxP: jax.Array
    completion_ids_NxC: jax.Array
    completion_mask_NxC: jax.Array  # every generated token (stop token included): what the statistics cover
    loss_mask_NxC: jax.Array  # generated tokens that count in the loss
    advantages_N: jax.Array
    old_logps_NxC: jax.Array | None = None  # pi_old, when num_iterations > 1 or importance sampling is on
    ref_logps_NxC: jax.Array | None = None  # pi_ref, when beta > 0
    rollout_logps_NxC: jax.Array | None = None  # the engine's: the importance weight and the logged mismatch


def learning_rate_schedule(optim: OptimSection, total_steps: int) -> optax.Schedule:
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else optim.learning_rate, peak_value=optim.learning_rate,
        warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=optim.learning_rate * optim.min_lr_ratio)


def make_optimizer(optim: OptimSection, total_updates: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(optim, total_updates)
    match optim.name:
        case "adamw":
            update = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
        case "lion":
            update = optax.lion(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
        case _:
            raise ValueError(f"optim.name: expected adamw or lion, received {optim.name!r}")
    if optim.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.max_grad_norm), update)
    return update


def updates_lost_to_rounding(params, step_size: float) -> float:
    """Share of the weights w for which w + step_size and w - step_size both round back to w in w's own
    dtype: an optimizer step of that size (Lion's is exactly the learning rate, Adam's about it) would
    leave them unchanged. bf16 weights of std 0.02 lose nearly every update of 1e-6."""

    @jax.jit
    def count(tree):
        leaves = jax.tree.leaves(tree)
        kept = [jnp.sum((w + step_size != w) | (w - step_size != w), dtype=jnp.float32) for w in leaves]
        return sum(kept), sum(w.size for w in leaves)

    kept, total = count(params)
    return 1.0 - float(kept) / total


def completion_logps(model: Qwen2ForCausalLM, params, prompt_ids_NxP, prompt_mask_NxP, completion_ids_NxC,
                     temperature: float):
    """log pi(completion token) and entropy per completion position, from one forward of the whole row."""
    c = completion_ids_NxC.shape[1]
    tokens = jnp.concatenate([prompt_ids_NxP, completion_ids_NxC], axis=1)
    lengths_N = prompt_mask_NxP.sum(axis=1, keepdims=True).astype(jnp.int32)
    positions = jnp.concatenate([prompt_positions(prompt_mask_NxP), lengths_N + jnp.arange(c)], axis=1)
    key_valid = jnp.concatenate([prompt_mask_NxP, jnp.ones_like(completion_ids_NxC)], axis=1)
    # Position i predicts token i + 1: the c positions before the last one predict the completion.
    logits, _ = model.apply({"params": params}, tokens, positions, key_valid, logits_last_n=c, logits_skip_last=1)
    return token_logps_and_entropy(logits, completion_ids_NxC, temperature)


def make_logps_fn(model: Qwen2ForCausalLM, mesh: Mesh, temperature: float):
    """Jitted log-probs of completions under given params (old / reference policies)."""

    @jax.jit
    def logps_fn(params, prompt_ids_NxP, prompt_mask_NxP, completion_ids_NxC):
        logps, _ = completion_logps(model, params, prompt_ids_NxP, prompt_mask_NxP, completion_ids_NxC,
                                    temperature)
        return jax.lax.with_sharding_constraint(logps, sharding.row_sharding(mesh, 2))

    return logps_fn


def _split_micro(x: jax.Array, num_micro: int) -> jax.Array:
    """[N, ...] -> [num_micro, N/num_micro, ...] taking rows num_micro apart, so each device keeps its
    own rows (rows are sharded in contiguous blocks)."""
    rows = x.shape[0] // num_micro
    return jnp.swapaxes(x.reshape(rows, num_micro, *x.shape[1:]), 0, 1)


def _loss_fn(params, micro: TrainBatch, weights_NxC, model, train: TrainSection, temperature: float):
    """The micro-batch's weighted loss; the sums of its per-token statistics over every generated token
    and their maxima."""
    logps, entropy = completion_logps(model, params, micro.prompt_ids_NxP, micro.prompt_mask_NxP,
                                      micro.completion_ids_NxC, temperature)
    old = jax.lax.stop_gradient(logps) if micro.old_logps_NxC is None else micro.old_logps_NxC
    generated = micro.completion_mask_NxC
    per_token, stats = per_token_loss(logps, old, micro.advantages_N, micro.ref_logps_NxC,
                                      micro.rollout_logps_NxC, generated, train)
    stats["entropy"] = jax.lax.stop_gradient(entropy)
    maxes = {}
    if micro.rollout_logps_NxC is not None:
        # Before any update of the step this policy is the one that sampled: the engine should agree with it.
        stats["mismatch"] = jnp.abs(jax.lax.stop_gradient(logps) - micro.rollout_logps_NxC)
        maxes["mismatch"] = jnp.max(jnp.where(generated > 0, stats["mismatch"], 0.0))
    sums = {name: jnp.sum(jnp.where(generated > 0, value, 0.0)) for name, value in stats.items()}
    return jnp.sum(per_token * weights_NxC), (sums, maxes)


def make_train_step(model: Qwen2ForCausalLM, optimizer: optax.GradientTransformation, train: TrainSection,
                    num_micro: int, temperature: float, state_shardings, mesh: Mesh):
    """The jitted update. Its metrics: loss, grad_norm, and means over every generated token (the loss
    mask aside, so a step whose groups all drop out still shows the policy) of the clip indicators,
    entropy, KL, and the |rollout - trainer| log-prob gap of this forward (`mismatch`, with its max)."""
    loss_fn = functools.partial(_loss_fn, model=model, train=train, temperature=temperature)
    loss_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: TrainBatch):
        # Unrolled layers take their weights split per layer once, outside the micro-batch loop.
        params = state.params if model.scan_layers else unstack_layers(state.params)
        weights_NxC = token_weights(batch.loss_mask_NxC, train.loss_type)
        micro_batches = jax.tree.map(lambda x: _split_micro(x, num_micro), (batch, weights_NxC))

        def accumulate(carry, micro):
            grads, loss, sums, maxes = carry
            (micro_loss, (micro_sums, micro_maxes)), micro_grads = loss_and_grad(params, *micro)
            return (jax.tree.map(jnp.add, grads, micro_grads), loss + micro_loss,
                    jax.tree.map(jnp.add, sums, micro_sums), jax.tree.map(jnp.maximum, maxes, micro_maxes)), None

        _, stats_shape = jax.eval_shape(loss_fn, params, *jax.tree.map(lambda x: x[0], micro_batches))
        init = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0.0),
                *jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape))
        (grads, loss, sums, maxes), _ = jax.lax.scan(accumulate, init, micro_batches)
        grads = grads if model.scan_layers else stack_layers(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        tokens = jnp.maximum(batch.completion_mask_NxC.sum(), 1.0)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        metrics |= {name: value / tokens for name, value in sums.items()}
        metrics |= {f"{name}_max": value for name, value in maxes.items()}
        return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state), metrics

    return jax.jit(train_step, donate_argnums=(0,),
                   out_shardings=(state_shardings, sharding.replicated(mesh)))


def init_state(params, optimizer: optax.GradientTransformation, mesh: Mesh):
    """A TrainState on the mesh and the shardings to keep it there."""
    abstract = jax.eval_shape(lambda p: TrainState(jnp.int32(0), p, optimizer.init(p)), params)
    shardings = sharding.tree_shardings(abstract, mesh)
    state = jax.jit(lambda p: TrainState(jnp.int32(0), p, optimizer.init(p)), out_shardings=shardings)(params)
    return state, shardings


def global_batch(host: TrainBatch, mesh: Mesh) -> TrainBatch:
    """A TrainBatch of global arrays from one of this process's rows (numpy); None stays None."""
    return jax.tree.map(lambda rows: sharding.global_rows(rows, mesh), host)

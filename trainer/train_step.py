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
from trainer.model.qwen2 import Qwen2ForCausalLM, prefill, prompt_positions, stack_layers, unstack_layers


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
    # Every prompt_group consecutive rows share one prompt (sharding.shared_prompt_group): the update
    # may then forward each group's prompt once. Static: a batch of another grouping traces its own step.
    prompt_group: int = flax.struct.field(pytree_node=False, default=1)


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
                     temperature: float, prompt_group: int = 1):
    """log pi(completion token) and entropy per completion position: from one forward of the whole row,
    or, where every prompt_group consecutive rows share a prompt (`shared_prompt_group`), from each
    group's prompt forwarded once and its completions attending to that forward's keys and values."""
    if prompt_group > 1:
        logits = shared_prompt_logits(model, params, prompt_ids_NxP, prompt_mask_NxP, completion_ids_NxC,
                                       prompt_group)
        return token_logps_and_entropy(logits, completion_ids_NxC, temperature)
    c = completion_ids_NxC.shape[1]
    tokens = jnp.concatenate([prompt_ids_NxP, completion_ids_NxC], axis=1)
    lengths_N = prompt_mask_NxP.sum(axis=1, keepdims=True).astype(jnp.int32)
    positions = jnp.concatenate([prompt_positions(prompt_mask_NxP), lengths_N + jnp.arange(c)], axis=1)
    key_valid = jnp.concatenate([prompt_mask_NxP, jnp.ones_like(completion_ids_NxC)], axis=1)
    # Position i predicts token i + 1: the c positions before the last one predict the completion.
    logits, _ = model.apply({"params": params}, tokens, positions, key_valid, logits_last_n=c, logits_skip_last=1)
    return token_logps_and_entropy(logits, completion_ids_NxC, temperature)


def shared_prompt_logits(model: Qwen2ForCausalLM, params, prompt_ids_NxP, prompt_mask_NxP, completion_ids_NxC,
                          group: int):
    """The completion positions' logits, each group's prompt forwarded once: the prompts fill a KV cache
    as the sampler's prefill does, the cache is repeated for the group's rows, and the completions run
    as one chunk attending to it. A GRPO group's rows share their prompt, so its forward and backward
    (the larger part of the row: 128 of 192 tokens in bench/peers) are done once instead of group times;
    the prompt's gradient is the sum over its completions, as in the whole-row forward. Needs one cache
    per layer (unrolled layers): scanned layers carry the stacked cache through the scan, and the
    backward would keep a copy of it for every layer."""
    if model.scan_layers:
        raise ValueError("a shared-prompt forward needs unrolled layers (model.layer_loop=unrolled)")
    p, c = prompt_ids_NxP.shape[1], completion_ids_NxC.shape[1]
    # The last prompt position predicts the first completion token.
    last_prompt_logits_Nx1xV, cache = prefill(model, params, prompt_ids_NxP[::group], prompt_mask_NxP[::group], c,
                                              group)
    lengths_Nx1 = prompt_mask_NxP.sum(axis=1, keepdims=True).astype(jnp.int32)
    key_valid_NxS = jnp.concatenate([prompt_mask_NxP, jnp.ones_like(completion_ids_NxC)], axis=1)
    completion_logits, _ = model.apply({"params": params}, completion_ids_NxC, lengths_Nx1 + jnp.arange(c),
                                       key_valid_NxS, cache, p, logits_last_n=c - 1, logits_skip_last=1)
    return jnp.concatenate([last_prompt_logits_Nx1xV, completion_logits], axis=1)


def usable_prompt_group(model: Qwen2ForCausalLM, prompt_group: int, rows: int, num_micro: int = 1,
                        data_parallel: int = 1) -> int:
    """The batch's prompt group where the update can forward each group's prompt once: unrolled layers
    (`shared_prompt_logits` says why) and, on every data-parallel device's block of rows, whole groups in
    every micro-batch (else a micro-batch's groups would come from one device's rows and every device
    would compute them all); else 1."""
    rows_per_device, spread = divmod(rows, data_parallel)
    whole_groups = prompt_group > 1 and not spread and rows_per_device % (prompt_group * num_micro) == 0
    return prompt_group if whole_groups and not model.scan_layers else 1


def make_logps_fn(model: Qwen2ForCausalLM, mesh: Mesh, temperature: float, num_micro: int = 1):
    """Jitted log-probs of completions under given params (old / reference policies), each group's
    prompt shared exactly where the update with num_micro micro-batches shares it, so that pi_old and
    the update's pi come from the same computation."""

    @functools.partial(jax.jit, static_argnames=("prompt_group",))
    def logps_fn(params, prompt_ids_NxP, prompt_mask_NxP, completion_ids_NxC, prompt_group: int = 1):
        group = usable_prompt_group(model, prompt_group, prompt_ids_NxP.shape[0], num_micro,
                                    sharding.data_parallel_size(mesh))
        logps, _ = completion_logps(model, params, prompt_ids_NxP, prompt_mask_NxP, completion_ids_NxC,
                                    temperature, group)
        return jax.lax.with_sharding_constraint(logps, sharding.row_sharding(mesh, 2))

    return logps_fn


def _split_micro(x: jax.Array, num_micro: int, group: int = 1) -> jax.Array:
    """[N, ...] -> [num_micro, N/num_micro, ...] taking groups of `group` consecutive rows num_micro
    groups apart, so each device keeps its own rows (rows are sharded in contiguous blocks) and a group
    that shares a prompt stays in one micro-batch."""
    groups = x.shape[0] // group
    grouped = x.reshape(groups // num_micro, num_micro, group, *x.shape[1:])
    return jnp.swapaxes(grouped, 0, 1).reshape(num_micro, x.shape[0] // num_micro, *x.shape[1:])


def _loss_fn(params, micro: TrainBatch, weights_NxC, model, train: TrainSection, temperature: float):
    """The micro-batch's weighted loss; the sums of its per-token statistics over every generated token
    and their maxima."""
    logps, entropy = completion_logps(model, params, micro.prompt_ids_NxP, micro.prompt_mask_NxP,
                                      micro.completion_ids_NxC, temperature, micro.prompt_group)
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
        group = usable_prompt_group(model, batch.prompt_group, batch.prompt_ids_NxP.shape[0], num_micro,
                                    sharding.data_parallel_size(mesh))
        batch = batch.replace(prompt_group=group)
        micro_batches = jax.tree.map(lambda x: _split_micro(x, num_micro, group), (batch, weights_NxC))

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

"""The GRPO policy loss as pure JAX functions over [rows, completion tokens] arrays.

The loss of a batch is sum(token_weight * per_token_loss). Token weights carry the normalisation
of each loss type and are computed once over the whole (global) batch, so gradient accumulation
over micro-batches sums to exactly the full-batch loss. The settings are the config's `train`
section itself; a choice the config does not offer is an error here too, never another choice.
"""

from __future__ import annotations

import typing

import jax
import jax.numpy as jnp

from trainer.config import KlEstimator, LossType, TrainSection


def kl_divergence(logps_NxC: jax.Array, ref_logps_NxC: jax.Array, estimator: KlEstimator) -> jax.Array:
    """Per-token KL(pi || pi_ref) penalty on tokens x sampled from pi, whose gradient is, in expectation,
    the gradient of KL(pi || pi_ref) itself.

    With log r = log pi(x) - log pi_ref(x):
    - k2 = (log r)^2 / 2. Its gradient, log r * grad log pi(x), averages to the KL's gradient exactly.
    - k3 (the default): the value of the paper's pi_ref/pi - log(pi_ref/pi) - 1 (unbiased, non-negative),
      with k2's gradient. Departure from GRPO (DeepSeekMath) and TRL, which differentiate k3 as written:
      that gradient, (1 - pi_ref/pi) grad log pi(x), averages to the gradient of the other direction,
      KL(pi_ref || pi), which on peaked next-token distributions can point away from the KL's own
      (tests/trainer/test_trainer_objective.py holds a 5-token case at cosine -0.45). Value and gradient
      are combined straight-through, as verl's `k3+`.
    k1 = log r is not offered: as a loss its gradient is grad log pi(x), which averages to zero under pi,
    so beta * k1 would add noise and no pull towards the reference.
    """
    log_ratio = logps_NxC - ref_logps_NxC
    k2 = 0.5 * jnp.square(log_ratio)
    match estimator:
        case "k2":
            return k2
        case "k3":
            k3 = jnp.exp(-log_ratio) + log_ratio - 1.0
            return k2 + jax.lax.stop_gradient(k3 - k2)
    raise ValueError(f"kl_estimator: expected one of {', '.join(typing.get_args(KlEstimator))}, received {estimator!r}")


def token_weights(mask_NxC: jax.Array, loss_type: LossType) -> jax.Array:
    """grpo: 1/|o_i| per token, averaged over the rows with loss tokens (TRL averages over all rows,
    empty ones included); dapo: 1/(all loss tokens); dr_grpo: 1/(rows x L_max), L_max being the
    completion width (rollout.max_new_tokens)."""
    mask = mask_NxC.astype(jnp.float32)
    match loss_type:
        case "dapo":
            return mask / jnp.maximum(mask.sum(), 1.0)
        case "dr_grpo":
            return mask / mask.size
        case "grpo":
            lengths_N = mask.sum(axis=1, keepdims=True)
            rows = jnp.maximum((lengths_N > 0).sum(), 1)
            return mask / jnp.maximum(lengths_N, 1.0) / rows
    raise ValueError(f"loss_type: expected one of {', '.join(typing.get_args(LossType))}, received {loss_type!r}")


def per_token_loss(logps_NxC, old_logps_NxC, advantages_N, ref_logps_NxC, rollout_logps_NxC, generated_NxC,
                   train: TrainSection) -> tuple[jax.Array, dict[str, jax.Array]]:
    """-min(r A, clip(r, 1-eps_low, 1+eps_high) A) [x truncated IS weight] + beta KL, per token.

    ref_logps are read only when beta > 0, rollout_logps only when importance sampling is on; either may
    be None otherwise. Positions outside generated_NxC (padding after the stop token) may hold anything:
    every input there is replaced by the current log-prob before any exp, so they compute ratio 1 and
    KL 0, never inf * 0 = NaN.
    """
    generated = jnp.asarray(generated_NxC).astype(bool)
    current = jax.lax.stop_gradient(logps_NxC)
    old = jnp.where(generated, old_logps_NxC, current)
    ratio = jnp.exp(logps_NxC - old)
    adv = advantages_N[:, None]
    clipped_ratio = jnp.clip(ratio, 1.0 - train.epsilon_low, 1.0 + train.epsilon_high)
    surrogate = jnp.minimum(ratio * adv, clipped_ratio * adv)
    if train.importance_sampling_cap > 0:
        surrogate = surrogate * importance_weight(old, rollout_logps_NxC, generated, train.importance_sampling_cap)
    loss = -surrogate
    stats = {
        "clip_low": ((ratio < 1.0 - train.epsilon_low) & (adv < 0)).astype(jnp.float32),
        "clip_high": ((ratio > 1.0 + train.epsilon_high) & (adv > 0)).astype(jnp.float32),
    }
    if train.beta > 0:
        kl = kl_divergence(logps_NxC, jnp.where(generated, ref_logps_NxC, current), train.kl_estimator)
        loss = loss + train.beta * kl
        stats["kl"] = kl
    return loss, stats


def importance_weight(old_logps_NxC, rollout_logps_NxC, generated_NxC, cap: float) -> jax.Array:
    """The truncated importance weight min(pi_old / pi_rollout, cap) per token, held constant (1 on padding)."""
    if rollout_logps_NxC is None:
        raise ValueError("train.importance_sampling_cap > 0 needs the rollout backend's log-probs; it returned none")
    rollout = jnp.where(generated_NxC, rollout_logps_NxC, old_logps_NxC)
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(old_logps_NxC - rollout), cap))


def token_logps_and_entropy(logits_NxCxV: jax.Array, tokens_NxC: jax.Array,
                            temperature: float) -> tuple[jax.Array, jax.Array]:
    """log pi(token) and the entropy of the temperature-scaled distribution the sampler drew from.

    The token's log-prob is picked by a one-hot select and a sum rather than a gather: the same number
    (every other term is an exact 0), and its backward is an elementwise select that XLA fuses into the
    log-softmax's, where a gather's is a scatter into a zeroed [rows, tokens, vocab] array. On a TPU a
    gather along the vocabulary is no faster either, so this is not a per-platform choice."""
    logp_NxCxV = jax.nn.log_softmax(logits_NxCxV.astype(jnp.float32) / temperature, axis=-1)
    picked_NxCxV = jnp.arange(logp_NxCxV.shape[-1]) == tokens_NxC[..., None]
    token_logps = jnp.sum(jnp.where(picked_NxCxV, logp_NxCxV, 0.0), axis=-1)
    entropy = -jnp.sum(jnp.exp(logp_NxCxV) * logp_NxCxV, axis=-1)
    return token_logps, entropy

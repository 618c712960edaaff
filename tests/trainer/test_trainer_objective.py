"""Advantages and every loss term against numbers computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.advantages import STD_EPS, group_advantages, informative_rows
from trainer.config import TrainSection
from trainer.losses import kl_divergence, per_token_loss, token_logps_and_entropy, token_weights

REWARDS = np.array([1, 0, 0, 0, 1, 1, 1, 1], np.float32)


def test_group_scaled_advantages():
    std = math.sqrt(0.25 * 0.75)
    expected = [0.75 / (std + STD_EPS)] + [-0.25 / (std + STD_EPS)] * 3 + [0.0] * 4
    np.testing.assert_allclose(group_advantages(REWARDS, 4, "group"), expected, rtol=1e-6)


def test_batch_scaled_and_mean_only_advantages():
    batch_std = math.sqrt(0.625 * 0.375)
    np.testing.assert_allclose(group_advantages(REWARDS, 4, "batch"),
                               np.array([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]) / (batch_std + STD_EPS), rtol=1e-6)
    np.testing.assert_allclose(group_advantages(REWARDS, 4, "none"), [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])


def test_dynamic_sampling_keeps_groups_with_spread():
    np.testing.assert_array_equal(informative_rows(REWARDS, 4), [True] * 4 + [False] * 4)


def test_kl_estimators():
    logp, ref = jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25]))
    np.testing.assert_allclose(kl_divergence(logp, ref, "k2"), [0.5 * math.log(2) ** 2], rtol=1e-6)
    np.testing.assert_allclose(kl_divergence(logp, ref, "k3"), [0.5 + math.log(2) - 1], rtol=1e-6)
    np.testing.assert_allclose(kl_divergence(logp, logp, "k3"), [0.0], atol=1e-7)


MASK = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
ALL = True  # every token generated (broadcasts over the [rows, tokens] arrays)


@pytest.mark.parametrize("loss_type, expected", [
    ("dapo", [[1 / 3, 1 / 3, 0], [1 / 3, 0, 0]]),
    ("grpo", [[1 / 4, 1 / 4, 0], [1 / 2, 0, 0]]),
    ("dr_grpo", [[1 / 6, 1 / 6, 0], [1 / 6, 0, 0]]),
])
def test_token_weights(loss_type, expected):
    np.testing.assert_allclose(token_weights(MASK, loss_type), expected, rtol=1e-6)


def test_grpo_divides_by_the_rows_with_loss_tokens_not_all_rows():
    """An empty row (dropped by dynamic sampling) does not count in grpo's row mean; TRL's mean over all
    3 rows would give [[1/6, 1/6, 0], [1/3, 0, 0], [0, 0, 0]]."""
    mask = jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], jnp.float32)
    np.testing.assert_allclose(token_weights(mask, "grpo"), [[1 / 4, 1 / 4, 0], [1 / 2, 0, 0], [0, 0, 0]],
                               rtol=1e-6)


def _settings(**overrides):
    return TrainSection(**(dict(loss_type="dapo", beta=0.0, kl_estimator="k3", epsilon_low=0.2, epsilon_high=0.28)
                           | overrides))


def test_clipped_surrogate_per_token():
    # ratio 1.5 / 0.5 against advantages +1 / -1, one case per token.
    logps = jnp.log(jnp.array([[1.5, 1.5, 0.5, 0.5]]))
    old = jnp.zeros((1, 4))
    advantages = jnp.array([1.0])
    loss, stats = per_token_loss(logps, old, advantages, old, old, ALL, _settings())
    np.testing.assert_allclose(loss, [[-1.28, -1.28, -0.5, -0.5]], rtol=1e-6)
    loss_neg, stats_neg = per_token_loss(logps, old, -advantages, old, old, ALL, _settings())
    np.testing.assert_allclose(loss_neg, [[1.5, 1.5, 0.8, 0.8]], rtol=1e-6)
    np.testing.assert_array_equal(stats["clip_high"], [[1, 1, 0, 0]])
    np.testing.assert_array_equal(stats_neg["clip_low"], [[0, 0, 1, 1]])


def test_kl_term_is_added_with_beta():
    logps, ref = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))
    loss, stats = per_token_loss(logps, logps, jnp.array([0.0]), ref, logps, ALL, _settings(beta=0.1))
    np.testing.assert_allclose(loss, [[0.1 * (0.5 + math.log(2) - 1)]], rtol=1e-6)
    np.testing.assert_allclose(stats["kl"], [[0.5 + math.log(2) - 1]], rtol=1e-6)
    # d/dlogp of beta * k3 with a stop-gradient old policy is k2's: beta * log(pi / pi_ref) = 0.1 * log 2
    # (k3 differentiated as written would give beta * (1 - pi_ref / pi) = 0.05; see kl_divergence).
    grad = jax.grad(lambda lp: per_token_loss(lp, jax.lax.stop_gradient(lp), jnp.array([0.0]), ref, lp, ALL,
                                              _settings(beta=0.1))[0].sum())(logps)
    np.testing.assert_allclose(grad, [[0.1 * math.log(2)]], rtol=1e-5)


def test_truncated_importance_weight():
    logps = jnp.log(jnp.array([[0.3, 0.3]]))
    rollout = jnp.log(jnp.array([[0.1, 0.2]]))  # pi_old / pi_rollout = 3 (capped to 2) and 1.5
    loss, _ = per_token_loss(logps, logps, jnp.array([1.0]), logps, rollout, ALL,
                             _settings(importance_sampling_cap=2.0))
    np.testing.assert_allclose(loss, [[-2.0, -1.5]], rtol=1e-5)


def test_importance_weight_without_rollout_log_probs_is_refused():
    logps = jnp.log(jnp.array([[0.3, 0.3]]))
    with pytest.raises(ValueError, match="importance_sampling_cap > 0 needs the rollout backend's log-probs"):
        per_token_loss(logps, logps, jnp.array([1.0]), None, None, ALL, _settings(importance_sampling_cap=2.0))


@pytest.mark.parametrize("call", [lambda: token_weights(MASK, "token_mean"),
                                  lambda: kl_divergence(jnp.zeros(1), jnp.zeros(1), "k1")])
def test_a_choice_the_config_does_not_offer_is_an_error_not_another_choice(call):
    with pytest.raises(ValueError, match=r"^(loss_type|kl_estimator): expected one of"):
        call()


def test_policy_gradient_at_ratio_one_is_advantage_times_score():
    logps = jnp.log(jnp.array([[0.5, 0.25]]))
    grad = jax.grad(lambda lp: per_token_loss(lp, jax.lax.stop_gradient(lp), jnp.array([2.0]), lp, lp, ALL,
                                              _settings())[0].sum())(logps)
    np.testing.assert_allclose(grad, [[-2.0, -2.0]], rtol=1e-6)


def test_token_logps_and_entropy_with_temperature():
    logits = jnp.array([[[0.0, math.log(3.0)]]])  # probs 1/4, 3/4 at temperature 1
    logps, entropy = token_logps_and_entropy(logits, jnp.array([[1]]), temperature=1.0)
    np.testing.assert_allclose(logps, [[math.log(0.75)]], rtol=1e-6)
    np.testing.assert_allclose(entropy, [[-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]], rtol=1e-6)
    logps_t2, _ = token_logps_and_entropy(logits, jnp.array([[1]]), temperature=2.0)
    np.testing.assert_allclose(logps_t2, [[math.log(math.sqrt(3) / (1 + math.sqrt(3)))]], rtol=1e-6)


def _offered_kl_estimators() -> list[str]:
    """The estimators the config accepts (so a newly offered one is tested without editing this file)."""
    from trainer.config import ConfigError, TrainSection

    offered = []
    for name in ("k1", "k2", "k3", "low_var_kl", "mse", "abs"):
        try:
            TrainSection(beta=0.1, kl_estimator=name)
        except ConfigError:
            continue
        offered.append(name)
    return offered


# (policy logits, reference logits) over 5 tokens: a mild pair, and a peaked pair like an LLM's next-token
# distributions (the reference keeps 1e-3 on a token the policy gives 2e-6), where the paper's k3
# differentiated as written points away from the KL's gradient (cosine -0.45).
SOFTMAX_PAIRS = [
    ([0.3, -0.2, 1.1, 0.0, -1.0], [0.0, 0.4, 0.5, -0.3, -0.6]),
    ([-13.175, -11.0639, 0.0, -7.4637, -14.7506], [-6.6763, -15.1343, 0.0, -7.6424, -12.0646]),
]


def _true_kl_gradient(logits, ref_logits) -> np.ndarray:
    """d KL(pi || pi_ref) / d logits by central differences of the exact KL, in float64 NumPy."""
    def kl(z):
        logp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
        logq = ref_logits - np.log(np.exp(ref_logits - ref_logits.max()).sum()) - ref_logits.max()
        return float(np.sum(np.exp(logp) * (logp - logq)))

    h, grad = 1e-6, np.zeros_like(logits)
    for i in range(len(logits)):
        step = np.eye(len(logits))[i] * h
        grad[i] = (kl(logits + step) - kl(logits - step)) / (2 * h)
    return grad


def _expected_loss_gradient(estimator, logits, ref_logits) -> np.ndarray:
    """E_{x ~ pi}[d loss(x) / d logits], exactly: the loss of each of the 5 tokens as the trainer computes it
    for a sampled token (beta 1, advantage 0), weighted by its probability."""
    ref_logps = jax.nn.log_softmax(jnp.asarray(ref_logits, jnp.float32))

    def token_loss(z, token):
        logp = jax.nn.log_softmax(z)[token].reshape(1, 1)
        loss, _ = per_token_loss(logp, jax.lax.stop_gradient(logp), jnp.zeros(1), ref_logps[token].reshape(1, 1),
                                 logp, ALL, _settings(beta=1.0, kl_estimator=estimator))
        return loss.sum()

    z = jnp.asarray(logits, jnp.float32)
    probs = np.asarray(jax.nn.softmax(z), np.float64)
    return sum(probs[t] * np.asarray(jax.grad(token_loss)(z, t), np.float64) for t in range(len(logits)))


@pytest.mark.parametrize("estimator", _offered_kl_estimators())
@pytest.mark.parametrize("logits, ref_logits", SOFTMAX_PAIRS)
def test_every_offered_kl_estimator_has_the_kl_gradient_in_expectation(estimator, logits, ref_logits):
    logits, ref_logits = np.array(logits), np.array(ref_logits)
    true = _true_kl_gradient(logits, ref_logits)
    expected = _expected_loss_gradient(estimator, logits, ref_logits)
    cosine = expected @ true / (np.linalg.norm(expected) * np.linalg.norm(true) + 1e-30)
    assert cosine > 0.999, f"{estimator}: expected gradient {expected} against the KL's {true} (cosine {cosine:.3f})"
    np.testing.assert_allclose(expected, true, atol=1e-3 * np.linalg.norm(true))


def test_k1_is_refused_with_the_reason():
    from trainer.config import ConfigError, load_config

    with pytest.raises(ConfigError) as error:
        load_config(None, sets=["train.kl_estimator=k1"], environ={})
    assert str(error.value) == ("train.kl_estimator: expected k2 or k3 (k1 was removed: as a loss its gradient "
                                "is zero in expectation), received 'k1'")

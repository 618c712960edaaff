"""The jitted train step: accumulation equals the full batch, KL moves weights, donation, one compile,
and the optimizers' first steps."""

import jax
import numpy as np
import optax
import pytest

from trainer.config import OptimSection, TrainSection
from trainer.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from trainer.model.weights import load_params
from trainer.sharding import make_mesh, put_tree, tree_shardings
from trainer.train_step import TrainBatch, global_batch, init_state, learning_rate_schedule, make_optimizer, make_train_step

ROWS, PROMPT, NEW = 8, 6, 5


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    config = Qwen2Config.from_dir(tiny_model_dir)
    model = Qwen2ForCausalLM(config)
    host_params = load_params(tiny_model_dir, config, np.float32)
    mesh = make_mesh("1,-1,1")
    rng = np.random.default_rng(0)
    mask = np.ones((ROWS, NEW), np.float32)
    mask[1, 3:] = 0
    mask[5, 1:] = 0
    host = TrainBatch(prompt_ids_NxP=rng.integers(3, 400, (ROWS, PROMPT)).astype(np.int32),
                      prompt_mask_NxP=np.ones((ROWS, PROMPT), np.int32),
                      completion_ids_NxC=rng.integers(3, 400, (ROWS, NEW)).astype(np.int32),
                      completion_mask_NxC=mask.copy(), loss_mask_NxC=mask,
                      advantages_N=rng.standard_normal(ROWS).astype(np.float32),
                      ref_logps_NxC=np.full((ROWS, NEW), -6.0, np.float32),
                      rollout_logps_NxC=np.zeros((ROWS, NEW), np.float32))
    return model, host_params, mesh, host


def _step(setup, optimizer, num_micro, train=TrainSection(), host_overrides=None):
    model, host_params, mesh, host = setup
    params = put_tree(host_params, tree_shardings(host_params, mesh))
    state, shardings = init_state(params, optimizer, mesh)
    step = make_train_step(model, optimizer, train, num_micro, 1.0, shardings, mesh)
    batch = global_batch(host.replace(**(host_overrides or {})), mesh)
    new_state, metrics = step(state, batch)
    return state, new_state, jax.device_get(metrics), step, batch


def _delta(before_host, state):
    return jax.tree.map(lambda a, b: np.asarray(b) - a, before_host, jax.device_get(state.params))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batch_accumulation_equals_full_batch(setup, loss_type):
    train = TrainSection(loss_type=loss_type, beta=0.1)
    sgd = optax.sgd(1.0)  # the parameter change is minus the gradient
    _, full, full_metrics, _, _ = _step(setup, sgd, 1, train)
    _, accumulated, acc_metrics, _, _ = _step(setup, sgd, 4, train)
    full_delta, acc_delta = _delta(setup[1], full), _delta(setup[1], accumulated)
    for a, b in zip(jax.tree.leaves(full_delta), jax.tree.leaves(acc_delta), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-4)
    assert max(np.abs(x).max() for x in jax.tree.leaves(full_delta)) > 1e-4  # a real gradient flowed
    for key in ("loss", "entropy", "kl", "grad_norm"):
        np.testing.assert_allclose(acc_metrics[key], full_metrics[key], rtol=1e-5)


def test_kl_term_moves_weights_only_when_beta_is_positive(setup):
    zero_advantages = {"advantages_N": np.zeros(ROWS, np.float32)}
    sgd = optax.sgd(1.0)
    _, no_kl, metrics, _, _ = _step(setup, sgd, 1, TrainSection(beta=0.0), zero_advantages)
    assert all(np.abs(d).max() == 0 for d in jax.tree.leaves(_delta(setup[1], no_kl)))
    assert "kl" not in metrics
    _, with_kl, metrics, _, _ = _step(setup, sgd, 1, TrainSection(beta=0.5), zero_advantages)
    assert max(np.abs(d).max() for d in jax.tree.leaves(_delta(setup[1], with_kl))) > 1e-4
    # k3 with ref log-prob -6 against a near-uniform policy over 512 tokens (log-prob ~ -6.24) is ~ 0.03.
    assert 0.0 < metrics["kl"] < 0.1 and metrics["loss"] == pytest.approx(0.5 * metrics["kl"], rel=1e-5)


def test_state_is_donated_and_the_step_compiles_once(setup):
    optimizer = make_optimizer(OptimSection(), 10)
    state, new_state, _, step, batch = _step(setup, optimizer, 2)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.params))
    for _ in range(2):
        new_state, _ = step(new_state, batch)
    assert int(new_state.step) == 3 and step._cache_size() == 1


@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_first_optimizer_step_moves_each_weight_by_the_learning_rate(setup, name):
    optim = OptimSection(name=name, learning_rate=0.01, warmup_steps=0, max_grad_norm=0.0, weight_decay=0.0)
    _, new_state, metrics, _, _ = _step(setup, make_optimizer(optim, 10), 1)
    # Adam's first step is lr * g / (|g| + eps); Lion's is lr * sign(g): both ~ lr wherever g is not tiny.
    kernel = np.abs(_delta(setup[1], new_state)["layers"]["layer"]["q_proj"]["kernel"])
    assert kernel.max() == pytest.approx(0.01, rel=1e-3)
    assert np.median(kernel) > 0.009
    assert metrics["grad_norm"] > 0


def test_gradient_clipping_reports_the_norm_before_clipping(setup):
    loose = OptimSection(name="adamw", max_grad_norm=0.0)
    tight = OptimSection(name="adamw", max_grad_norm=1e-6)
    _, _, loose_metrics, _, _ = _step(setup, make_optimizer(loose, 10), 1)
    _, _, tight_metrics, _, _ = _step(setup, make_optimizer(tight, 10), 1)
    assert tight_metrics["grad_norm"] == pytest.approx(loose_metrics["grad_norm"], rel=1e-6)
    assert loose_metrics["grad_norm"] > 1e-6


def test_warmup_cosine_schedule():
    schedule = learning_rate_schedule(OptimSection(learning_rate=1.0, warmup_steps=4, min_lr_ratio=0.1), 20)
    assert float(schedule(0)) == 0.0 and float(schedule(2)) == pytest.approx(0.5)
    assert float(schedule(4)) == pytest.approx(1.0) and float(schedule(20)) == pytest.approx(0.1)
    assert 0.1 < float(schedule(12)) < 1.0


def test_policy_statistics_cover_every_generated_token_even_outside_the_loss(setup):
    """Dynamic sampling can drop every group from the loss; entropy and clipping still describe the policy."""
    sgd = optax.sgd(1.0)
    train = TrainSection(beta=0.1)
    _, _, counted, _, _ = _step(setup, sgd, 2, train)
    dropped = {"loss_mask_NxC": np.zeros((ROWS, NEW), np.float32)}
    _, unchanged, none_counted, _, _ = _step(setup, sgd, 2, train, dropped)
    assert counted["entropy"] > 1.0  # a near-uniform policy over 512 tokens: ~6.2 nats
    for key in ("entropy", "kl", "clip_low", "clip_high"):
        np.testing.assert_allclose(none_counted[key], counted[key], rtol=1e-5)
    assert none_counted["loss"] == 0.0
    assert all(np.abs(d).max() == 0 for d in jax.tree.leaves(_delta(setup[1], unchanged)))


def test_a_batch_without_rollout_log_probs_updates_alike_and_has_no_mismatch(setup):
    """A backend without log-probs leaves them None: the step traces without the mismatch, and the update
    (importance sampling off) is the one it makes with them."""
    sgd = optax.sgd(1.0)
    _, with_logps, metrics, _, _ = _step(setup, sgd, 2)
    _, without_logps, metrics_without, _, _ = _step(setup, sgd, 2, host_overrides={"rollout_logps_NxC": None})
    assert {"mismatch", "mismatch_max"} <= set(metrics) and not {"mismatch", "mismatch_max"} & set(metrics_without)
    np.testing.assert_allclose(metrics_without["loss"], metrics["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(_delta(setup[1], with_logps)), jax.tree.leaves(_delta(setup[1], without_logps)),
                    strict=True):
        np.testing.assert_allclose(b, a, atol=1e-7)


def test_extreme_log_probs_at_padding_do_not_leak_nan(setup):
    """Old / reference / rollout log-probs after the stop token are padding: whatever they hold (here values
    whose ratio overflows float32), the loss and the update are those of clean padding."""
    _, _, _, host = setup
    pad = host.completion_mask_NxC == 0
    train = TrainSection(beta=0.1, importance_sampling_cap=2.0)
    sgd = optax.sgd(1.0)
    current = {"old_logps_NxC": np.full((ROWS, NEW), -6.2, np.float32),
               "rollout_logps_NxC": np.full((ROWS, NEW), -6.2, np.float32)}
    _, clean, clean_metrics, _, _ = _step(setup, sgd, 2, train, current)
    hostile = {name: np.where(pad, -300.0, value).astype(np.float32) for name, value in current.items()}
    hostile["ref_logps_NxC"] = np.where(pad, 300.0, host.ref_logps_NxC).astype(np.float32)
    _, dirty, dirty_metrics, _, _ = _step(setup, sgd, 2, train, hostile)
    for key in ("loss", "grad_norm", "entropy", "kl"):
        assert np.isfinite(dirty_metrics[key]), key
        np.testing.assert_allclose(dirty_metrics[key], clean_metrics[key], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(_delta(setup[1], clean)), jax.tree.leaves(_delta(setup[1], dirty)), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-7)


def _lion_step_changes(tiny_model_dir, param_dtype, compute_dtype, learning_rate=1e-6):
    """Share of weights one Lion step at the smoke preset's learning rate changes."""
    config = Qwen2Config.from_dir(tiny_model_dir)
    model = Qwen2ForCausalLM(config, dtype=compute_dtype, param_dtype=param_dtype)
    mesh = make_mesh("1,-1,1")
    host_params = load_params(tiny_model_dir, config, param_dtype)
    optimizer = make_optimizer(OptimSection(name="lion", learning_rate=learning_rate, warmup_steps=0), 10)
    params = put_tree(host_params, tree_shardings(host_params, mesh))
    state, shardings = init_state(params, optimizer, mesh)
    step = make_train_step(model, optimizer, TrainSection(), 1, 1.0, shardings, mesh)
    rng = np.random.default_rng(0)
    host = TrainBatch(prompt_ids_NxP=rng.integers(3, 400, (ROWS, PROMPT)).astype(np.int32),
                      prompt_mask_NxP=np.ones((ROWS, PROMPT), np.int32),
                      completion_ids_NxC=rng.integers(3, 400, (ROWS, NEW)).astype(np.int32),
                      completion_mask_NxC=np.ones((ROWS, NEW), np.float32), loss_mask_NxC=np.ones((ROWS, NEW), np.float32),
                      advantages_N=rng.standard_normal(ROWS).astype(np.float32))
    new_state, _ = step(state, global_batch(host, mesh))
    before, after = jax.tree.leaves(host_params), jax.tree.leaves(jax.device_get(new_state.params))
    changed = sum(int((np.asarray(a) != np.asarray(b)).sum()) for a, b in zip(before, after, strict=True))
    return changed / sum(a.size for a in before), after, new_state


def test_bf16_master_weights_round_lion_updates_at_1e_6_away_and_fp32_master_weights_keep_them(tiny_model_dir):
    """The smoke preset's optimizer on weights of std 0.02 (bf16's spacing there is ~1.2e-4): bf16 master
    weights keep only the updates of weights near 0; float32 master weights with bf16 compute keep all."""
    import jax.numpy as jnp

    bf16_share, _, _ = _lion_step_changes(tiny_model_dir, jnp.bfloat16, jnp.bfloat16)
    mixed_share, after, state = _lion_step_changes(tiny_model_dir, jnp.float32, jnp.bfloat16)
    print(f"weights changed by one Lion step at lr 1e-6: bf16 master {bf16_share:.1%}, float32 master {mixed_share:.1%}")
    assert bf16_share < 0.05 and mixed_share > 0.99
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.opt_state) if hasattr(leaf, "dtype")
               and jnp.issubdtype(leaf.dtype, jnp.floating))
    assert all(leaf.dtype == jnp.float32 for leaf in after)


def test_mixed_precision_computes_in_bf16_from_float32_master_weights(tiny_model_dir):
    """bf16 compute from float32 master weights is the forward of the bf16-rounded weights."""
    import jax.numpy as jnp

    config = Qwen2Config.from_dir(tiny_model_dir)
    master = load_params(tiny_model_dir, config, np.float32)
    tokens = jnp.asarray(np.random.default_rng(1).integers(3, 400, (2, 7)), jnp.int32)
    positions, valid = jnp.tile(jnp.arange(7), (2, 1)), jnp.ones((2, 7), jnp.int32)
    mixed, _ = Qwen2ForCausalLM(config, dtype=jnp.bfloat16).apply({"params": master}, tokens, positions, valid)
    rounded = jax.tree.map(lambda w: jnp.asarray(w, jnp.bfloat16), master)
    pure, _ = Qwen2ForCausalLM(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16).apply(
        {"params": rounded}, tokens, positions, valid)
    full, _ = Qwen2ForCausalLM(config).apply({"params": master}, tokens, positions, valid)
    np.testing.assert_array_equal(np.asarray(mixed), np.asarray(pure))
    assert np.abs(np.asarray(mixed) - np.asarray(full)).max() > 1e-4  # it did not run in float32


@pytest.mark.parametrize("param_dtype, learning_rate, lost", [
    ("bfloat16", 1e-6, (0.9, 1.0)),  # the smoke preset: nearly every update lost
    ("bfloat16", 1e-3, (0.0, 0.05)),
    ("float32", 1e-6, (0.0, 0.001)),
    ("float32", 1e-12, (0.9, 1.0)),
])
def test_share_of_weights_an_update_of_the_learning_rate_leaves_unchanged(tiny_model_dir, param_dtype, learning_rate,
                                                                          lost):
    from trainer.train_step import updates_lost_to_rounding

    config = Qwen2Config.from_dir(tiny_model_dir)
    params = jax.tree.map(jax.numpy.asarray, load_params(tiny_model_dir, config, np.dtype(param_dtype)
                                                         if param_dtype == "float32" else jax.numpy.bfloat16))
    low, high = lost
    assert low <= updates_lost_to_rounding(params, learning_rate) <= high

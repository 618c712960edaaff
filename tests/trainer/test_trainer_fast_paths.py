"""The CPU's faster paths against the plain ones they replace: unrolled layers with per-layer KV caches
against the scan, completion log-probs from the completion positions only (one-hot pick) against a
gather over the whole row's logits, inverse-CDF draws against the exact distribution; and the
per-platform defaults that choose them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer.config import TrainSection, load_config
from trainer.data import left_pad
from trainer.model.load import layer_loop
from trainer.model.qwen2 import KVCache, Qwen2Config, Qwen2ForCausalLM, prompt_positions, stack_layers, unstack_layers
from trainer.model.weights import load_params
from trainer.rollout.sampling import generate, sample_next, sampling_method
from trainer.sharding import make_mesh, put_tree, tree_shardings
from trainer.train_step import TrainBatch, completion_logps, global_batch, init_state, make_train_step

# Unrolled and scanned layers compute the same function in float32; the unrolled layers' fused kernels and
# transposed keys sum in another order, so the logits agree to float32 rounding (FLOAT32_TOLERANCE on
# logits of O(1)).
FLOAT32_TOLERANCE = 1e-5
PROBS = np.array([0.0, 0.5, 0.3, 0.15, 0.05])  # token 0 has probability 0: it must never be drawn


def _model_and_rows(model_dir, rows=(9, 5, 1, 12)):
    config = Qwen2Config.from_dir(model_dir)
    params = jax.tree.map(jnp.asarray, load_params(model_dir, config, np.float32))
    rng = np.random.default_rng(11)
    ids, mask = map(jnp.asarray, left_pad([rng.integers(3, 400, size=n).tolist() for n in rows], 12, pad_id=0))
    return config, params, ids, mask


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "untied_sharded_model_dir"])
def test_unrolled_layers_compute_the_scanned_logits(fixture, request):
    config, params, ids, mask = _model_and_rows(request.getfixturevalue(fixture))
    scanned, _ = Qwen2ForCausalLM(config).apply({"params": params}, ids, prompt_positions(mask), mask)
    unrolled, _ = Qwen2ForCausalLM(config, scan_layers=False).apply({"params": params}, ids,
                                                                      prompt_positions(mask), mask)
    real = np.asarray(mask).astype(bool)
    assert np.abs(np.asarray(scanned)).max() > 0.05
    np.testing.assert_allclose(np.asarray(unrolled)[real], np.asarray(scanned)[real], atol=FLOAT32_TOLERANCE)


def test_unrolled_cached_decode_writes_one_cache_per_layer_and_equals_the_scanned_forward(untied_sharded_model_dir):
    config, params, ids, mask = _model_and_rows(untied_sharded_model_dir)
    model = Qwen2ForCausalLM(config, scan_layers=False)
    positions = prompt_positions(mask)
    full, _ = Qwen2ForCausalLM(config).apply({"params": params}, ids, positions, mask)
    cache = KVCache.zeros(config, 4, 12, jnp.float32, per_layer=True)
    assert len(cache.keys) == config.num_hidden_layers
    assert cache.keys[0].shape == (4, config.num_key_value_heads, config.head_dim, 12)
    assert cache.values[0].shape == (4, config.num_key_value_heads, 12, config.head_dim)
    _, cache = model.apply({"params": params}, ids[:, :9], positions[:, :9], mask, cache, 0)
    for col in range(9, 12):
        step, cache = model.apply({"params": params}, ids[:, col:col + 1], positions[:, col:col + 1], mask, cache, col)
        real = np.asarray(mask[:, col]).astype(bool)
        np.testing.assert_allclose(np.asarray(step[real, 0]), np.asarray(full[real, col]), atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("remat", [False, True])
def test_unrolled_layers_give_the_scanned_gradients(tiny_model_dir, remat):
    config, params, ids, mask = _model_and_rows(tiny_model_dir)
    completion = ids[:, ::-1][:, :5]  # any tokens will do as a completion

    def objective(model):
        return jax.jit(jax.grad(lambda p: jnp.sum(completion_logps(model, p, ids, mask, completion, 0.8)[0])))

    scanned = objective(Qwen2ForCausalLM(config))(params)
    unrolled = objective(Qwen2ForCausalLM(config, remat=remat, scan_layers=False))(params)
    assert jax.tree.structure(unrolled) == jax.tree.structure(scanned)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(scanned)) > 1e-3
    # The unrolled layers' fused projections and transposed keys sum in another order: measured, each path is
    # within 3e-4 of a float64 reference on gradients up to 39 (under 1e-5 of the largest), and the layers'
    # tensors agree to 1e-5 of their own largest gradient.
    for got, want in zip(jax.tree.leaves(unrolled), jax.tree.leaves(scanned), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5 * float(jnp.abs(want).max()),
                                   rtol=1e-4)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_completion_log_probs_equal_a_gather_from_every_position_of_the_row(tiny_model_dir, scan_layers):
    """completion_logps computes logits of the completion's positions only and picks the token by a
    one-hot sum; here the whole row's logits are computed and the token gathered, in NumPy."""
    config, params, ids, mask = _model_and_rows(tiny_model_dir)
    model = Qwen2ForCausalLM(config, scan_layers=scan_layers)
    completion = jnp.asarray(np.random.default_rng(3).integers(0, config.vocab_size, (4, 6)), jnp.int32)
    temperature = 0.7
    logps, entropy = completion_logps(model, params, ids, mask, completion, temperature)
    tokens = jnp.concatenate([ids, completion], axis=1)
    positions = jnp.concatenate([prompt_positions(mask), mask.sum(1, keepdims=True) + jnp.arange(6)], axis=1)
    logits, _ = Qwen2ForCausalLM(config).apply({"params": params}, tokens, positions,
                                               jnp.concatenate([mask, jnp.ones_like(completion)], axis=1))
    scaled = np.asarray(logits, np.float64)[:, 11:-1] / temperature  # position i predicts token i + 1
    logp = scaled - np.log(np.exp(scaled - scaled.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - scaled.max(-1, keepdims=True)
    expected = np.take_along_axis(logp, np.asarray(completion)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(logps), expected, atol=FLOAT32_TOLERANCE)
    np.testing.assert_allclose(np.asarray(entropy), -(np.exp(logp) * logp).sum(-1), atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("temperature, top_k, expected", [
    (1.0, -1, PROBS),
    (1.0, 2, [0, 0.5 / 0.8, 0.3 / 0.8, 0, 0]),
    (0.5, -1, PROBS ** 2 / (PROBS ** 2).sum()),
])
def test_inverse_cdf_draws_follow_the_distribution(temperature, top_k, expected):
    rows = 40_000
    logits = jnp.repeat(jnp.log(jnp.asarray(PROBS, jnp.float32))[None], rows, axis=0)
    tokens, logps = sample_next(logits, jax.random.key(5), jnp.float32(temperature), 1.0, top_k, inverse_cdf=True)
    freq = np.bincount(np.asarray(tokens), minlength=5) / rows
    np.testing.assert_allclose(freq, expected, atol=0.01)  # ~4 standard errors at 40k draws
    assert freq[0] == 0 and (top_k < 0 or freq[3:].sum() == 0)  # zero-probability tokens never come out
    scaled = PROBS ** (1 / temperature) / (PROBS ** (1 / temperature)).sum()
    np.testing.assert_allclose(np.asarray(logps), np.log(scaled[np.asarray(tokens)]), rtol=1e-5)


@pytest.mark.parametrize("scan_layers, inverse_cdf", [(False, False), (False, True), (True, True)])
def test_fast_sampler_paths_keep_log_prob_parity_with_the_trainer(tiny_model_dir, scan_layers, inverse_cdf):
    config, params, ids, mask = _model_and_rows(tiny_model_dir)
    model = Qwen2ForCausalLM(config, scan_layers=scan_layers)
    out_ids, out_mask, out_logps = generate(model, params, ids, mask, jax.random.key(3), jnp.float32(0.9),
                                            max_new_tokens=8, top_k=-1, top_p=1.0, stop_ids=(511,), pad_id=0,
                                            inverse_cdf=inverse_cdf)
    trainer_logps, _ = completion_logps(Qwen2ForCausalLM(config), params, ids, mask, out_ids, 0.9)
    valid = np.asarray(out_mask).astype(bool)
    np.testing.assert_allclose(np.asarray(out_logps)[valid], np.asarray(trainer_logps)[valid], atol=FLOAT32_TOLERANCE)


def test_unrolled_greedy_decoding_picks_the_scanned_tokens(tiny_model_dir):
    config, params, ids, mask = _model_and_rows(tiny_model_dir)
    outputs = [generate(Qwen2ForCausalLM(config, scan_layers=scan), params, ids, mask, jax.random.key(0),
                        jnp.float32(0.0), max_new_tokens=8, top_k=-1, top_p=1.0, stop_ids=(), pad_id=0)
               for scan in (True, False)]
    np.testing.assert_array_equal(np.asarray(outputs[0][0]), np.asarray(outputs[1][0]))
    np.testing.assert_allclose(np.asarray(outputs[0][2]), np.asarray(outputs[1][2]), atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("platform, loop, method", [("cpu", "unrolled", "inverse_cdf"), ("tpu", "scan", "gumbel"),
                                                    ("gpu", "scan", "gumbel")])
def test_auto_chooses_per_platform_and_an_explicit_choice_stands(platform, loop, method):
    assert (layer_loop("auto", platform), sampling_method("auto", platform)) == (loop, method)
    assert (layer_loop("scan", "cpu"), sampling_method("gumbel", "cpu")) == ("scan", "gumbel")
    assert (layer_loop("unrolled", "tpu"), sampling_method("inverse_cdf", "tpu")) == ("unrolled", "inverse_cdf")


@pytest.mark.parametrize("preset", ["smoke", "gsm8k-qwen2.5-1.5b-v4-8"])
def test_tpu_presets_scan_over_layers(preset):
    assert load_config(preset, environ={}).model.layer_loop == "scan"


def test_unstacking_the_layers_for_the_unrolled_loop_is_undone_exactly(untied_sharded_model_dir):
    config, params, _, _ = _model_and_rows(untied_sharded_model_dir)
    per_layer = unstack_layers(params)
    assert set(per_layer["per_layer"]) == {str(i) for i in range(config.num_hidden_layers)}
    layer = per_layer["per_layer"]["1"]
    q_width, kv_width = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    assert layer["qkv_proj"]["kernel"].shape == (config.hidden_size, q_width + 2 * kv_width)
    np.testing.assert_array_equal(layer["qkv_proj"]["kernel"][:, q_width:q_width + kv_width],
                                  params["layers"]["layer"]["k_proj"]["kernel"][1])
    np.testing.assert_array_equal(layer["gate_up_proj"]["kernel"][:, config.intermediate_size:],
                                  params["layers"]["layer"]["up_proj"]["kernel"][1])
    restored = stack_layers(per_layer)
    assert jax.tree.structure(restored) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("num_micro", [1, 4])
def test_the_unrolled_train_step_moves_every_weight_as_the_scanned_one(untied_sharded_model_dir, num_micro):
    """The update splits the weights per layer and fuses them once, and gives the gradients back in the
    stored layout: plain SGD (the change is minus the gradient) must move each weight alike."""
    config, host_params, _, _ = _model_and_rows(untied_sharded_model_dir)
    mesh = make_mesh("1,-1,1")
    rng = np.random.default_rng(3)
    rows, prompt, new = 8, 6, 5
    batch = global_batch(TrainBatch(
        prompt_ids_NxP=rng.integers(3, 400, (rows, prompt)).astype(np.int32),
        prompt_mask_NxP=np.ones((rows, prompt), np.int32),
        completion_ids_NxC=rng.integers(3, 400, (rows, new)).astype(np.int32),
        completion_mask_NxC=np.ones((rows, new), np.float32), loss_mask_NxC=np.ones((rows, new), np.float32),
        advantages_N=rng.standard_normal(rows).astype(np.float32)), mesh)
    deltas = []
    for scan in (True, False):
        params = put_tree(host_params, tree_shardings(host_params, mesh))
        state, shardings = init_state(params, optax.sgd(1.0), mesh)
        step = make_train_step(Qwen2ForCausalLM(config, scan_layers=scan), optax.sgd(1.0), TrainSection(),
                               num_micro, 1.0, shardings, mesh)
        new_state, _ = step(state, batch)
        deltas.append(jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), host_params,
                                   jax.device_get(new_state.params)))
    scanned, unrolled = deltas
    assert jax.tree.structure(unrolled) == jax.tree.structure(scanned)
    assert max(np.abs(d).max() for d in jax.tree.leaves(scanned)) > 1e-4  # a real gradient flowed
    for got, want in zip(jax.tree.leaves(unrolled), jax.tree.leaves(scanned), strict=True):
        assert np.abs(want).max() > 0  # every tensor moved: no part of the fused kernels was dropped
        np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=1e-4)

"""Each GRPO group's prompt forwarded once: in the sampler's prefill and in the update, against the
whole-row paths they replace, and the check that decides when rows share a prompt."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer.config import TrainSection
from trainer.data import left_pad
from trainer.model.qwen2 import Qwen2Config, Qwen2ForCausalLM, repeat_rows
from trainer.model.weights import load_params
from trainer.rollout.sampling import generate
from trainer.sharding import make_mesh, put_tree, shared_prompt_group, tree_shardings
from trainer.train_step import (
    TrainBatch,
    completion_logps,
    global_batch,
    init_state,
    make_logps_fn,
    make_train_step,
    usable_prompt_group,
)

GROUP, NEW = 3, 5
PROMPT_LENGTHS = (9, 4, 12, 1)  # left-padded to 12: every group has its own padding


def _rows(seed=0):
    """Four prompts of different lengths, each repeated GROUP times, and a distinct completion per row."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, 400, size=n).tolist() for n in PROMPT_LENGTHS]
    ids, mask = left_pad([p for p in prompts for _ in range(GROUP)], 12, pad_id=0)
    completions = rng.integers(3, 400, (ids.shape[0], NEW)).astype(np.int32)
    return ids, mask, completions


def _model(model_dir, scan_layers=False):
    config = Qwen2Config.from_dir(model_dir)
    return Qwen2ForCausalLM(config, scan_layers=scan_layers), jax.tree.map(
        jnp.asarray, load_params(model_dir, config, np.float32))


def test_rows_share_a_prompt_only_when_every_group_is_identical():
    ids, mask, _ = _rows()
    assert shared_prompt_group(ids, mask, GROUP) == GROUP
    assert shared_prompt_group(ids, mask, 1) == 1
    assert shared_prompt_group(ids[:-1], mask[:-1], GROUP) == 1  # rows not whole groups
    one_token_off = ids.copy()
    one_token_off[4, -1] += 1  # the second row of the second group
    assert shared_prompt_group(one_token_off, mask, GROUP) == 1
    padding_moved = mask.copy()
    padding_moved[4, 0] = 1  # same ids, another mask (the 4-token prompt): positions and keys differ
    assert shared_prompt_group(ids, padding_moved, GROUP) == 1
    assert shared_prompt_group(ids, mask, 2 * GROUP) == 1  # groups of 6 rows would mix two prompts
    no_prompt = np.zeros_like(mask)
    no_prompt[:GROUP] = mask[:GROUP]  # the other groups' rows are all padding: nothing to share, and the
    assert shared_prompt_group(ids, no_prompt, GROUP) == 1  # whole-row forward lets them see completion keys


@pytest.mark.parametrize("scan_layers, rows, num_micro, data_parallel, expected", [
    (False, 12, 1, 1, GROUP), (False, 12, 2, 1, GROUP), (False, 12, 4, 1, GROUP),  # 4 groups: 4, 2 or 1 a micro-batch
    (False, 12, 3, 1, 1), (False, 12, 6, 1, 1),  # a group would straddle two micro-batches
    (False, 12, 2, 2, GROUP),  # 2 devices of 2 groups each: each micro-batch holds one group of each device
    (False, 12, 4, 2, 1),  # 4 micro-batches of one group: each from one device, computed by every device
    (False, 12, 1, 6, 1),  # 2 rows a device: a group would straddle two devices
    (True, 12, 1, 1, 1)])  # scanned layers forward whole rows
def test_the_update_shares_prompts_with_unrolled_layers_and_whole_groups_per_device_and_micro_batch(
        tiny_model_dir, scan_layers, rows, num_micro, data_parallel, expected):
    model, _ = _model(tiny_model_dir, scan_layers)
    assert usable_prompt_group(model, GROUP, rows, num_micro, data_parallel) == expected


def test_shared_prompt_log_probs_equal_the_whole_row_forward(untied_sharded_model_dir):
    model, params = _model(untied_sharded_model_dir)
    ids, mask, completions = map(jnp.asarray, _rows())
    whole = completion_logps(model, params, ids, mask, completions, 0.8)
    shared = completion_logps(model, params, ids, mask, completions, 0.8, prompt_group=GROUP)
    for got, want in zip(shared, whole, strict=True):
        assert np.abs(np.asarray(want)).max() > 0.1
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)


def test_shared_prompt_forward_needs_unrolled_layers(tiny_model_dir):
    model, params = _model(tiny_model_dir, scan_layers=True)
    ids, mask, completions = map(jnp.asarray, _rows())
    with pytest.raises(ValueError, match="unrolled layers"):
        completion_logps(model, params, ids, mask, completions, 1.0, prompt_group=GROUP)


def test_old_log_probs_share_the_prompt_alike(tiny_model_dir):
    model, params = _model(tiny_model_dir)
    ids, mask, completions = map(jnp.asarray, _rows(1))
    logps_fn = make_logps_fn(model, make_mesh("1,-1,1"), 1.0)
    np.testing.assert_allclose(np.asarray(logps_fn(params, ids, mask, completions, prompt_group=GROUP)),
                               np.asarray(logps_fn(params, ids, mask, completions)), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("num_micro", [1, 4])
def test_the_shared_prompt_update_moves_every_weight_as_the_whole_row_update(untied_sharded_model_dir, num_micro,
                                                                             monkeypatch):
    """Plain SGD: the change is minus the gradient, where the prompt's share is the sum over its group."""
    import trainer.train_step as train_step_module

    traced, real = [], train_step_module.shared_prompt_logits
    monkeypatch.setattr(train_step_module, "shared_prompt_logits", lambda *a: traced.append(a[-1]) or real(*a))
    model, host_params = _model(untied_sharded_model_dir)
    ids, mask, completions = _rows(2)
    rows = ids.shape[0]
    completion_mask = np.ones((rows, NEW), np.float32)
    completion_mask[2, 3:] = 0  # one completion stopped early
    host = TrainBatch(ids, mask, completions, completion_mask, completion_mask.copy(),
                      np.random.default_rng(3).standard_normal(rows).astype(np.float32))
    mesh, sgd, deltas = make_mesh("1,-1,1"), optax.sgd(1.0), []
    for group in (1, GROUP):
        params = put_tree(jax.tree.map(np.asarray, host_params), tree_shardings(host_params, mesh))
        state, shardings = init_state(params, sgd, mesh)
        step = make_train_step(model, sgd, TrainSection(), num_micro, 1.0, shardings, mesh)
        new_state, metrics = step(state, global_batch(host.replace(prompt_group=group), mesh))
        deltas.append((jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), host_params,
                                    jax.device_get(new_state.params)), jax.device_get(metrics)))
    assert traced and set(traced) == {GROUP}  # the second step's trace, and only it, forwarded the prompts once
    (whole, whole_metrics), (shared, shared_metrics) = deltas
    assert max(np.abs(d).max() for d in jax.tree.leaves(whole)) > 1e-4
    for got, want in zip(jax.tree.leaves(shared), jax.tree.leaves(whole), strict=True):
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=1e-4)
    for key in ("loss", "entropy", "grad_norm"):
        np.testing.assert_allclose(shared_metrics[key], whole_metrics[key], rtol=1e-4)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_shared_prefill_samples_what_one_prefill_per_row_samples(tiny_model_dir, scan_layers):
    model, params = _model(tiny_model_dir, scan_layers)
    ids, mask, _ = map(jnp.asarray, _rows(4))

    def sample(group, temperature):
        return generate(model, params, ids, mask, jax.random.key(7), jnp.float32(temperature), max_new_tokens=6,
                        top_k=-1, top_p=1.0, stop_ids=(), pad_id=0, prompt_group=group)

    for temperature in (0.0, 1.0):  # greedy, then sampled: the same draws from the same distribution
        (ids_1, mask_1, logps_1), (ids_g, mask_g, logps_g) = sample(1, temperature), sample(GROUP, temperature)
        np.testing.assert_array_equal(np.asarray(ids_g), np.asarray(ids_1))
        np.testing.assert_array_equal(np.asarray(mask_g), np.asarray(mask_1))
        np.testing.assert_allclose(np.asarray(logps_g), np.asarray(logps_1), atol=2e-5, rtol=1e-5)
    assert len({tuple(row) for row in np.asarray(ids_1)}) > len(PROMPT_LENGTHS)  # rows of a group drew differently


def test_repeated_rows_give_back_the_sum_of_their_copies_gradients():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float32)
    weights = jnp.asarray(rng.standard_normal((2 * GROUP, 3, 4)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(repeat_rows(x, GROUP)), np.repeat(np.asarray(x), GROUP, axis=0))
    got = jax.grad(lambda a: jnp.sum(weights * repeat_rows(a, GROUP)))(x)
    want = np.asarray(weights).reshape(2, GROUP, 3, 4).sum(axis=1)  # row i's copies are rows i*GROUP .. i*GROUP+2
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)

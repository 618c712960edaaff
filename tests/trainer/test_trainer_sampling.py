"""The built-in JAX sampler: truncation, sampling frequencies, cache-consistent greedy decoding, stop tokens,
and log-probs that equal the trainer's."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.data import left_pad
from trainer.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from trainer.model.weights import load_params
from trainer.rollout.jax_sampler import JaxSamplerBackend
from trainer.sampling import SamplingSettings, generate, prompt_positions, sample_next, truncate_logits
from trainer.sharding import make_mesh
from trainer.train_step import completion_logps

PROBS = np.array([0.5, 0.3, 0.15, 0.05])
LOGITS = jnp.log(jnp.asarray(PROBS, jnp.float32))[None]


@pytest.mark.parametrize("top_k, top_p, kept", [
    (-1, 1.0, [1, 1, 1, 1]),
    (2, 1.0, [1, 1, 0, 0]),
    (-1, 0.7, [1, 1, 0, 0]),  # mass before token 3 is 0.8 >= 0.7
    (-1, 0.5, [1, 0, 0, 0]),
    (3, 0.9, [1, 1, 1, 0]),
])
def test_truncate_logits(top_k, top_p, kept):
    out = truncate_logits(LOGITS, top_k, top_p)
    np.testing.assert_array_equal(np.asarray(out[0] > -1e30), np.array(kept, bool))


@pytest.mark.parametrize("temperature, top_k, expected", [
    (1.0, -1, PROBS),
    (1.0, 2, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),
    (0.5, -1, PROBS ** 2 / (PROBS ** 2).sum()),
])
def test_sampling_frequencies(temperature, top_k, expected):
    rows = 40_000
    tokens, logps = sample_next(jnp.repeat(LOGITS, rows, axis=0), jax.random.key(0), jnp.float32(temperature),
                                1.0, top_k)
    freq = np.bincount(np.asarray(tokens), minlength=4) / rows
    np.testing.assert_allclose(freq, expected, atol=0.01)  # ~4 standard errors at 40k draws
    scaled = PROBS ** (1 / temperature) / (PROBS ** (1 / temperature)).sum()
    np.testing.assert_allclose(np.asarray(logps), np.log(scaled)[np.asarray(tokens)], rtol=1e-5)


def test_greedy_ignores_temperature_scaling_and_picks_argmax():
    tokens, logps = sample_next(LOGITS, jax.random.key(1), jnp.float32(0.0), 1.0, -1)
    assert int(tokens[0]) == 0 and math.isclose(float(logps[0]), math.log(0.5), rel_tol=1e-6)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    config = Qwen2Config.from_dir(tiny_model_dir)
    model = Qwen2ForCausalLM(config)
    params = jax.tree.map(jnp.asarray, load_params(tiny_model_dir, config, np.float32))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 400, size=n).tolist() for n in (7, 3, 10, 1)]
    ids, mask = map(jnp.asarray, left_pad(prompts, 12, pad_id=0))
    return model, params, ids, mask


def _generate(tiny, temperature, stop_ids=(511,), max_new_tokens=8, seed=0):
    model, params, ids, mask = tiny
    return generate(model, params, ids, mask, jax.random.key(seed), jnp.float32(temperature),
                    max_new_tokens=max_new_tokens, top_k=-1, top_p=1.0, stop_ids=stop_ids, pad_id=0)


def test_greedy_generation_matches_argmax_of_full_forward(tiny):
    model, params, ids, mask = tiny
    out_ids, out_mask, _ = _generate(tiny, 0.0)
    tokens, valid = ids, mask
    for t in range(8):  # recompute every step without a cache
        logits, _ = model.apply({"params": params}, tokens, prompt_positions(valid), valid)
        next_token = jnp.argmax(logits[:, -1], axis=-1)
        np.testing.assert_array_equal(np.asarray(out_ids[:, t]), np.asarray(next_token))
        tokens = jnp.concatenate([tokens, next_token[:, None]], axis=1)
        valid = jnp.concatenate([valid, jnp.ones_like(valid[:, :1])], axis=1)
    assert np.asarray(out_mask).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logps_equal_trainer_logps(tiny, temperature):
    model, params, ids, mask = tiny
    out_ids, out_mask, out_logps = _generate(tiny, temperature, seed=3)
    trainer_logps, _ = completion_logps(model, params, ids, mask, out_ids, temperature)
    valid = np.asarray(out_mask).astype(bool)
    np.testing.assert_allclose(np.asarray(out_logps)[valid], np.asarray(trainer_logps)[valid], atol=1e-5)


def test_stop_token_ends_rows_and_is_kept_in_the_mask(tiny):
    free_ids, _, _ = _generate(tiny, 1.0, seed=4)
    stop = int(free_ids[0, 2])  # a token row 0 samples at step 2 when nothing stops it
    ids, mask, logps = map(np.asarray, _generate(tiny, 1.0, stop_ids=(stop,), seed=4))
    for row in range(ids.shape[0]):
        hits = np.flatnonzero(ids[row] == stop)
        end = hits[0] + 1 if hits.size else ids.shape[1]
        assert mask[row].tolist() == [1] * end + [0] * (ids.shape[1] - end)
        assert (ids[row, end:] == 0).all() and (logps[row, end:] == 0).all()
    assert mask[0].sum() <= 3


def test_prefill_bucket_gives_the_same_completions(tiny):
    model, params, ids, mask = tiny
    settings = SamplingSettings(max_new_tokens=6, temperature=0.0)
    outputs = []
    for buckets in ([12], [4, 8, 12]):
        backend = JaxSamplerBackend(model, make_mesh("1,-1,1"), [511], 0, buckets)
        backend.push_weights(params)
        short = slice(1, 2)  # the 3-token prompt alone fits the 4-token bucket
        outputs.append(backend.generate(np.asarray(ids[short]), np.asarray(mask[short]), settings, seed=0))
    assert backend.bucket_for(3) == 4
    np.testing.assert_array_equal(outputs[0].completion_ids_NxC, outputs[1].completion_ids_NxC)
    np.testing.assert_allclose(outputs[0].logprobs_NxC, outputs[1].logprobs_NxC, atol=1e-5)


def test_ignore_eos_generates_every_token_through_the_stop_token(tiny):
    model, params, ids, mask = tiny
    free_ids, _, free_logps = map(np.asarray, _generate(tiny, 1.0, stop_ids=(-1,), seed=4))
    stop = int(free_ids[0, 2])  # a token row 0 samples at step 2, which would otherwise end the row
    backend = JaxSamplerBackend(model, make_mesh("1,-1,1"), [stop], 0, [12])
    backend.push_weights(params)
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, ignore_eos=True)
    out = backend.generate(np.asarray(ids), np.asarray(mask), settings, seed=4)
    np.testing.assert_array_equal(out.completion_ids_NxC, free_ids)  # the same draws, none cut short
    np.testing.assert_allclose(out.logprobs_NxC, free_logps, atol=1e-6)
    assert out.completion_mask_NxC.all()
    stopped = backend.generate(np.asarray(ids), np.asarray(mask), dataclasses.replace(settings, ignore_eos=False),
                               seed=4)
    assert stopped.completion_mask_NxC[0].sum() <= 3

"""The Flax Qwen2 against an independent NumPy forward on the same safetensors files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.trainer.numpy_qwen2 import NumpyQwen2
from trainer.data import left_pad
from trainer.model.qwen2 import KVCache, Qwen2Config, Qwen2ForCausalLM, prompt_positions
from trainer.model.weights import hf_from_params, load_params, params_from_hf, read_hf_tensors

# float32 Flax vs float64 NumPy: logits are O(0.1..1); summation-order error stays far below this.
FLOAT32_TOLERANCE = 2e-4
# bfloat16 compute keeps ~3 significant digits through a few layers.
BFLOAT16_TOLERANCE = 5e-2


def _sequences(vocab: int):
    rng = np.random.default_rng(7)
    return [rng.integers(0, vocab, size=n).tolist() for n in (9, 5, 1)]


def _flax_logits(model_dir, dtype=jnp.float32):
    config = Qwen2Config.from_dir(model_dir)
    model = Qwen2ForCausalLM(config, dtype=dtype)
    params = load_params(model_dir, config, np.float32)
    seqs = _sequences(config.vocab_size)
    ids, mask = left_pad(seqs, 12, pad_id=0)
    logits, _ = model.apply({"params": params}, jnp.asarray(ids), prompt_positions(jnp.asarray(mask)),
                            jnp.asarray(mask))
    return seqs, np.asarray(logits)


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "untied_sharded_model_dir"])
def test_logits_match_numpy_reference_on_left_padded_rows(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    reference = NumpyQwen2(model_dir)
    seqs, logits = _flax_logits(model_dir)
    for row, seq in enumerate(seqs):
        expected = reference.logits(seq)
        got = logits[row, -len(seq):]
        assert np.abs(got - expected).max() < FLOAT32_TOLERANCE
        assert np.abs(expected).max() > 0.05  # the comparison is not between two near-zero arrays


def test_bfloat16_compute_stays_close_to_reference(tiny_model_dir):
    reference = NumpyQwen2(tiny_model_dir)
    seqs, logits = _flax_logits(tiny_model_dir, dtype=jnp.bfloat16)
    assert np.abs(logits[0, -len(seqs[0]):] - reference.logits(seqs[0])).max() < BFLOAT16_TOLERANCE


def test_cached_decode_equals_full_forward(untied_sharded_model_dir):
    config = Qwen2Config.from_dir(untied_sharded_model_dir)
    model = Qwen2ForCausalLM(config)
    params = load_params(untied_sharded_model_dir, config, np.float32)
    seqs = _sequences(config.vocab_size)
    ids, mask = map(jnp.asarray, left_pad(seqs, 12, pad_id=0))
    positions = prompt_positions(mask)
    full, _ = model.apply({"params": params}, ids, positions, mask)
    # Prefill the first 9 columns, then feed the last 3 one at a time through the cache.
    cache = KVCache.zeros(config, 3, 12, jnp.float32)
    _, cache = model.apply({"params": params}, ids[:, :9], positions[:, :9], mask, cache, 0)
    for col in range(9, 12):
        step, cache = model.apply({"params": params}, ids[:, col:col + 1], positions[:, col:col + 1], mask,
                                  cache, col)
        real = np.asarray(mask[:, col]).astype(bool)  # a padding query sees no key: its output is arbitrary
        np.testing.assert_allclose(np.asarray(step[real, 0]), np.asarray(full[real, col]), atol=1e-5)


def test_weights_round_trip_between_layouts(untied_sharded_model_dir):
    config = Qwen2Config.from_dir(untied_sharded_model_dir)
    tensors = read_hf_tensors(untied_sharded_model_dir)
    back = hf_from_params(params_from_hf(tensors, config, np.float32), config)
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(np.asarray(back[name]), value)


def test_flax_init_shapes_match_loaded_params(tiny_model_dir):
    config = Qwen2Config.from_dir(tiny_model_dir)
    model = Qwen2ForCausalLM(config)
    ones = jnp.ones((1, 4), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), ones, ones, ones))["params"]
    loaded = load_params(tiny_model_dir, config, np.float32)
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, loaded)
    assert sum(x.size for x in jax.tree.leaves(loaded)) == config.num_params()


QWEN25_7B = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, head_dim=128, tie_word_embeddings=False)
V4_CHIP = 32 * 2**30


@pytest.mark.parametrize("shards, engine_devices, expected", [
    (4, 4, "bfloat16"),  # the smoke preset on a v4-8: 28.4 GiB of float32 state + 3.5 GiB of engine weights
    (8, 4, "float32"),  # a v4-16: 14.2 + 3.5 GiB
])
def test_auto_master_weights_are_float32_wherever_they_fit(shards, engine_devices, expected):
    from trainer.model.load import master_weights_dtype

    params = QWEN25_7B.num_params()
    assert params == 7_615_616_512  # Qwen2.5-7B's published size
    engine_bytes = params * 2 // engine_devices  # bf16 weights, tensor-parallel over the host's chips
    dtype, needed = master_weights_dtype(params, optimizer_moments=1, shards=shards,
                                         engine_bytes_per_device=engine_bytes, device_bytes=V4_CHIP)
    # float32 weights, Lion's one moment, the gradients and one update-sized temporary: 16 bytes a parameter
    assert needed == params * 16 // shards + engine_bytes
    assert dtype == expected


def test_the_smaller_gsm8k_model_fits_in_float32_even_with_adam():
    from trainer.model.load import master_weights_dtype

    qwen25_1_5b = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True)
    params = qwen25_1_5b.num_params()
    assert params == 1_543_714_304
    dtype, needed = master_weights_dtype(params, 2, 4, params * 2 // 4, V4_CHIP)
    assert (dtype, needed) == ("float32", params * 20 // 4 + params * 2 // 4)

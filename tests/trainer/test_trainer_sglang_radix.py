"""sglang-jax with its radix (prefix) cache on: a weight push must not leave keys and values computed
under the old weights for the next rollout to reuse. Its own module, so that its engine never runs
alongside test_trainer_sglang.py's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.trainer.helpers import start_sglang_engine
from trainer.data import left_pad
from trainer.rollout.sampling import SamplingSettings
from trainer.train_step import completion_logps

LOGPROB_TOLERANCE = 1e-4  # float32 engine against float32 trainer, as in test_trainer_sglang.py


@pytest.fixture(scope="module")
def radix_engine(tiny_model_dir, tmp_path_factory):
    engine = start_sglang_engine(tiny_model_dir, tmp_path_factory.mktemp("run"), "rollout.batch_size=2",
                                 "rollout.group_size=8", "rollout.prompt_length=48", "rollout.max_new_tokens=8",
                                 "train.micro_batch_size=16", "rollout.sglang.disable_radix_cache=false")
    yield engine
    engine[0].shutdown()


def test_a_push_drops_prefixes_cached_under_the_old_weights(radix_engine):
    backend, model, params, tokenizer = radix_engine
    questions = [f"What is {i % 4} + {i % 3}? Think it through step by step." for i in range(16)]
    ids, mask = left_pad([tokenizer.prompt_ids(q, "") for q in questions], 48, tokenizer.pad_id)
    settings = SamplingSettings(8, temperature=1.0)
    backend.push_weights(params)
    backend.generate(ids, mask, settings, seed=0)  # the prompts' keys and values under the old weights
    nudged = jax.tree.map(lambda x: x * 1.05, params)
    backend.push_weights(nudged)
    out = backend.generate(ids, mask, settings, seed=1)
    trainer_logps, _ = completion_logps(model, nudged, jnp.asarray(ids), jnp.asarray(mask),
                                        jnp.asarray(out.completion_ids_NxC), 1.0)
    valid = out.completion_mask_NxC.astype(bool)
    diff = np.abs(np.asarray(trainer_logps)[valid] - out.logps_NxC[valid])
    assert valid.sum() > 64 and diff.max() < LOGPROB_TOLERANCE, f"max |diff| {diff.max():.2e}"

"""Shared fixtures for the trainer tests: CPU JAX, tiny model folders, the in-repo GSM8K sample."""

import os

# Before anything imports JAX: run on CPU (sglang-jax also asserts JAX_PLATFORMS agrees with device="cpu").
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    return DATA_DIR / "gsm8k"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Tied embeddings, one safetensors file: the factory's default."""
    from trainer.testing.make_tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def untied_sharded_model_dir(tmp_path_factory) -> Path:
    """A separate lm_head and weights split over three safetensors shards plus an index."""
    from trainer.testing.make_tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("untied") / "model", seed=1, tie_word_embeddings=False,
                           num_shards=3, num_layers=3, num_heads=4, num_kv_heads=2)


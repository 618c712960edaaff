"""From the config's model_path to a Flax module and host parameters."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jax.numpy as jnp

from trainer.config import ConfigError, ModelSection
from trainer.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from trainer.model.weights import load_params

TINY_RANDOM = "tiny-random"
_HF_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer*"]


def _build_tiny_model(target: Path) -> Path:
    """Write the factory's tiny model once; concurrent processes race to an atomic rename."""
    from trainer.testing.make_tiny_model import make_tiny_model

    if (target / "config.json").exists():
        return target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=target.parent))
    make_tiny_model(staging, seed=0)
    try:
        os.rename(staging, target)
    except OSError:  # another process got there first; its folder is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target.absolute()


def resolve_model_dir(model_path: str, out_dir: str) -> Path:
    """A local folder as is; tiny-random built under out_dir; anything else a hub id, downloaded."""
    if model_path == TINY_RANDOM:
        return _build_tiny_model(Path(out_dir) / "tiny-model")
    path = Path(model_path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"model_path: expected a folder with config.json, received {model_path!r}")
        return path.absolute()
    if path.is_absolute() or model_path.startswith("."):
        raise ConfigError(f"model_path: expected an existing folder or a hub id, received {model_path!r}")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_path, allow_patterns=_HF_FILES))


def compute_dtype(name: str, platform: str):
    if name == "auto":
        return jnp.bfloat16 if platform == "tpu" else jnp.float32
    return jnp.dtype(name)


# Of a device's memory, what the weights, optimizer state, gradients and the engine's weights may take:
# the rest holds activations, logits, the engine's KV pool and XLA's workspace.
MASTER_WEIGHTS_SHARE = 0.75


def master_weights_dtype(num_params: int, optimizer_moments: int, shards: int, engine_bytes_per_device: int,
                         device_bytes: int) -> tuple[str, int]:
    """`model.param_dtype: auto`: float32 master weights wherever they fit, else bfloat16; and the bytes per
    device float32 would need: the weights, their optimizer moments, the gradients and one update-sized
    temporary (4 bytes each, split over the devices that shard the weights), plus the engine's weights.
    For Qwen2.5-7B with Lion on 4 devices this count gives 28.4 GiB per device; XLA's memory analysis of
    that update compiled for 4 CPU devices gives 30.7 GiB, activations included."""
    needed = num_params * 4 * (3 + optimizer_moments) // shards + engine_bytes_per_device
    return ("float32" if needed <= MASTER_WEIGHTS_SHARE * device_bytes else "bfloat16"), needed


def layer_loop(name: str, platform: str) -> str:
    """`model.layer_loop: auto`: unrolled on the CPU, where the small models it runs measured a decode step
    (with the CPU's inverse-CDF draws) at 0.73x and the update at 0.82x of the scan's, the unrolled
    layers' own layout included (bench/peers/fast_paths.py, the peer workload's 4-layer model); and only
    unrolled layers forward a GRPO group's shared prompt once in the update. Scan on a TPU (and a GPU), as
    the TPU presets have it: there a 28-layer model would compile 28 copies of the layer, and XLA's TPU
    loop reads the stacked weights and the stacked KV cache in place, which is what unrolling buys the
    CPU. Not measured on a TPU here, hence the conservative choice."""
    if name == "auto":
        return "unrolled" if platform == "cpu" else "scan"
    return name


def build_model(model_dir: Path, section: ModelSection, platform: str) -> tuple[Qwen2ForCausalLM, dict]:
    config = Qwen2Config.from_dir(model_dir)
    param_dtype = jnp.dtype(section.param_dtype)
    model = Qwen2ForCausalLM(config, dtype=compute_dtype(section.dtype, platform), param_dtype=param_dtype,
                             remat=section.remat, scan_layers=layer_loop(section.layer_loop, platform) == "scan")
    return model, load_params(model_dir, config, param_dtype)

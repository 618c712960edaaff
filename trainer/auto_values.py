"""The config's `auto` / 0 values replaced by what this run will use, before anything is built, so the
effective config the run prints is the one it runs: the compute dtype, the layer loop, the built-in
sampler's draw, the master weights' dtype (float32 where it fits beside the rollout engine's weights),
and the rollout backend's own sizes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp

from trainer.config import TrainerConfig
from trainer.metrics import print_flushed
from trainer.model.load import MASTER_WEIGHTS_SHARE, compute_dtype, layer_loop, master_weights_dtype
from trainer.model.qwen2 import Qwen2Config
from trainer.rollout import backend_class
from trainer.rollout.sampling import sampling_method
from trainer.runtime import Runtime, device_memory_bytes


def resolve_auto_values(config: TrainerConfig, runtime: Runtime, model_dir: Path,
                        out: Callable[[str], None] = print_flushed) -> TrainerConfig:
    """The config with `auto` / 0 values replaced by what this run will use, as the log should show."""
    model = Qwen2Config.from_dir(model_dir)
    dtype = jnp.dtype(compute_dtype(config.model.dtype, runtime.platform)).name
    loop = layer_loop(config.model.layer_loop, runtime.platform)
    config = config.model_copy(update={"model": config.model.model_copy(update={"dtype": dtype, "layer_loop": loop})})
    method = sampling_method(config.rollout.sampling_method, runtime.platform)
    config = config.model_copy(update={"rollout": config.rollout.model_copy(update={"sampling_method": method})})
    if config.model.param_dtype == "auto":
        param_dtype = resolve_param_dtype(config, model, runtime, out)
        config = config.model_copy(update={"model": config.model.model_copy(update={"param_dtype": param_dtype})})
    return backend_class(config.rollout.backend).resolve_settings(config, model, runtime)


def resolve_param_dtype(config: TrainerConfig, model: Qwen2Config, runtime: Runtime, out: Callable[[str], None]) -> str:
    """float32 master weights where they fit beside the engine's weights, else bfloat16 (and say why)."""
    engine_bytes = backend_class(config.rollout.backend).weight_bytes_per_device(config, model)
    shards = runtime.mesh.shape["fsdp"] * runtime.mesh.shape["tp"]
    device_bytes = device_memory_bytes(runtime.platform)
    dtype, needed = master_weights_dtype(model.num_params(), 1 if config.optim.name == "lion" else 2, shards,
                                         engine_bytes, device_bytes)
    if dtype != "float32":
        out(f"model.param_dtype auto: bfloat16, because float32 master weights would need about "
            f"{needed / 2**30:.3g} GiB per device with the engine's weights, over "
            f"{MASTER_WEIGHTS_SHARE:.0%} of the {device_bytes / 2**30:.3g} GiB a device has")
    return dtype

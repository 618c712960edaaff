"""This process within the run: start-up (.env, CPU device count, multi-host initialisation, the mesh),
then what the run asks of it: its block of each step's rows, and its devices' memory.

Multi-host: with JAX_NUM_PROCESSES > 1 in the environment, `jax.distributed.initialize` gets the
coordinator (JAX_COORDINATOR_ADDRESS), process count and id (JAX_PROCESS_ID) explicitly, with a
bounded timeout; otherwise `distributed: true` calls it bare, which on a TPU pod discovers the
other hosts itself.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from dotenv import find_dotenv, load_dotenv
from jax.sharding import Mesh

from trainer import sharding
from trainer.config import ConfigError, TrainerConfig


def load_env_file() -> None:
    """The repo's .env (searched upward from the working directory); variables already set win."""
    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)


@dataclasses.dataclass
class Runtime:
    mesh: Mesh
    platform: str  # cpu | tpu | gpu
    process_index: int
    process_count: int

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    def this_process_rows(self, total_rows: int) -> slice:
        """This process's block of rows that all processes generate, score and train on together: blocks are
        contiguous and in process order, as `sharding.global_rows` assembles them."""
        per_process = total_rows // self.process_count
        return slice(self.process_index * per_process, (self.process_index + 1) * per_process)


def _env_int(name: str, environ) -> int:
    try:
        return int(environ[name])
    except (KeyError, ValueError):
        raise ConfigError(f"{name}: expected an integer in the environment, received {environ.get(name)!r}") from None


def initialize_distributed(config: TrainerConfig, environ=os.environ) -> None:
    num_processes = _env_int("JAX_NUM_PROCESSES", environ) if "JAX_NUM_PROCESSES" in environ else 1
    if num_processes > 1:
        if not environ.get("JAX_COORDINATOR_ADDRESS"):
            raise ConfigError("JAX_COORDINATOR_ADDRESS: expected host:port when JAX_NUM_PROCESSES > 1, "
                              f"received {environ.get('JAX_COORDINATOR_ADDRESS')!r}")
        jax.distributed.initialize(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=num_processes,
                                   process_id=_env_int("JAX_PROCESS_ID", environ),
                                   initialization_timeout=config.distributed_timeout_s)
    elif config.distributed:
        jax.distributed.initialize(initialization_timeout=config.distributed_timeout_s)


def start(config: TrainerConfig) -> Runtime:
    """Configure JAX before its backends exist, join the other processes, build the mesh."""
    if config.num_cpu_devices > 0:
        jax.config.update("jax_num_cpu_devices", config.num_cpu_devices)
    initialize_distributed(config)
    mesh = sharding.make_mesh(config.mesh_shape)
    check_rows_fit_devices(config, mesh)
    return Runtime(mesh, jax.default_backend(), jax.process_index(), jax.process_count())


def device_memory_bytes(platform: str) -> int:
    """What one local device can hold: its memory limit on an accelerator; on CPU, its share of the
    host's available memory."""
    if platform == "cpu":
        import psutil

        return int(psutil.virtual_memory().available) // jax.local_device_count()
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", 0))


def free_device_bytes(platform: str) -> int:
    """What one local device has free now: its limit less what is in use on an accelerator; on CPU, the
    host's available memory."""
    if platform == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0))


def check_rows_fit_devices(config: TrainerConfig, mesh: Mesh) -> None:
    data_parallel = sharding.data_parallel_size(mesh)
    if config.train.micro_batch_size % data_parallel:
        raise ConfigError(f"train.micro_batch_size: expected a multiple of the {data_parallel} data-parallel "
                          f"devices (dp x fsdp of mesh_shape {config.mesh_shape}), "
                          f"received {config.train.micro_batch_size}")
    if config.rows % jax.process_count():
        raise ConfigError(f"rollout.batch_size: expected batch_size x group_size ({config.rows}) to divide "
                          f"over {jax.process_count()} processes, received {config.rollout.batch_size}")

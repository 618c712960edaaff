"""The (dp, fsdp, tp) device mesh, parameter partition rules, and moving rows between hosts and devices.

Rows (sequences) are split over dp x fsdp; weights are split over fsdp on one axis and tp on the
other. An axis that does not divide a dimension is dropped for that dimension (the weight is
replicated along it) rather than padded, so any model runs on any mesh.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trainer.config import ConfigError, parse_mesh_shape

MESH_AXES = ("dp", "fsdp", "tp")
DATA_AXES = ("dp", "fsdp")

# Regex on the '/'-joined parameter path -> spec. Stacked layer weights carry a leading layer axis.
PARTITION_RULES: tuple[tuple[str, P], ...] = (
    (r"embed_tokens/embedding$", P("tp", "fsdp")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", P(None, "fsdp", "tp")),
    (r"(q_proj|k_proj|v_proj)/bias$", P(None, "tp")),
    (r"(o_proj|down_proj)/kernel$", P(None, "tp", "fsdp")),
    (r"lm_head/kernel$", P("fsdp", "tp")),
)


def make_mesh(mesh_shape: str, devices: list | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    dims = list(parse_mesh_shape(mesh_shape))
    known = int(np.prod([d for d in dims if d != -1]))
    if -1 in dims:
        if len(devices) % known:
            raise ConfigError(f"mesh_shape: expected sizes whose product divides the {len(devices)} devices, "
                              f"received {mesh_shape!r}")
        dims[dims.index(-1)] = len(devices) // known
    if int(np.prod(dims)) != len(devices):
        raise ConfigError(f"mesh_shape: expected sizes multiplying to the {len(devices)} devices, "
                          f"received {mesh_shape!r}")
    return Mesh(np.asarray(devices).reshape(dims), MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["dp"] * mesh.shape["fsdp"]


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    for pattern, spec in PARTITION_RULES:
        if re.search(pattern, path) and len(spec) == len(shape):
            axes = [axis if axis is None or shape[i] % mesh.shape[axis] == 0 else None
                    for i, axis in enumerate(spec)]
            return P(*axes)
    return P()


def tree_shardings(tree, mesh: Mesh):
    """NamedShardings for any tree whose leaf paths end like parameter paths (params, optimizer state)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, spec_for(jax.tree_util.keystr(path, simple=True, separator="/"),
                                                        tuple(leaf.shape), mesh)), tree)


def put_tree(host_tree, shardings):
    """Place host (numpy) leaves on the mesh; each process supplies only the slices it holds."""
    return jax.tree.map(
        lambda array, sharding: jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx]),
        host_tree, shardings)


def row_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_rows(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """One global array of rows from each process's local rows (process order)."""
    return jax.make_array_from_process_local_data(row_sharding(mesh, local_rows.ndim), local_rows)


def local_rows(global_array: jax.Array, mesh: Mesh) -> np.ndarray:
    """This process's rows of a row-sharded global array, as numpy."""
    if jax.process_count() == 1:
        return np.asarray(global_array)
    spec = P(DATA_AXES, *([None] * (global_array.ndim - 1)))
    return np.asarray(multihost_utils.global_array_to_host_local_array(global_array, mesh, spec))


def shared_prompt_group(prompt_ids_NxP: np.ndarray, prompt_mask_NxP: np.ndarray, group_size: int) -> int:
    """group_size when every run of group_size consecutive rows of this process holds one prompt (the
    loop's rows: each prompt repeated group_size times), else 1; the smallest over every process, so
    that all of them trace the same program. The rollout's prefill and the update then forward each
    group's prompt once (trainer/train_step.py, trainer/rollout/sampling.py). A row without a prompt
    token is never shared: its last prompt position attends to nothing of the prompt, so the whole-row
    forward lets it see the completion's keys, which the shared prefill does not hold yet."""
    rows = prompt_ids_NxP.shape[0]
    shared = group_size > 1 and rows % group_size == 0 and bool(np.all(prompt_mask_NxP.sum(axis=1) > 0))
    for array in (prompt_ids_NxP, prompt_mask_NxP) if shared else ():
        grouped = array.reshape(rows // group_size, group_size, -1)
        shared = shared and bool(np.all(grouped == grouped[:, :1]))
    return int(gather_to_all(np.array([group_size if shared else 1])).min())


def gather_to_all(local: np.ndarray) -> np.ndarray:
    """Concatenate every process's local rows (process order) on every process."""
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local, tiled=True))

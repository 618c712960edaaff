"""On a pod, which devices each host's engine holds, and the collective that hands it the weights.

Every host runs its own engine on its own first tp_size devices for its own rows; left alone, the engine
would build its mesh over every device of the job and fail. sglang-jax counts the `device_indexes` it is
given from the lowest device id of the whole job. Everything here is computed from global facts (every
process's devices by id), so every process builds the same meshes and compiles the same collective.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding


def job_id_offset() -> int:
    """The lowest device id of the whole job, from which sglang-jax's mesh counts device indexes."""
    return min(device.id for device in jax.devices())


def host_devices(host: int) -> list:
    """One host's devices by id: every process computes the same list for every host."""
    return sorted((d for d in jax.devices() if d.process_index == host), key=lambda d: d.id)


def local_device_indexes(tp_size: int) -> list[int] | None:
    """This host's engine devices as sglang-jax's `device_indexes`; None (the engine's default) on one host."""
    if jax.process_count() == 1:
        return None
    offset = job_id_offset()
    return [device.id - offset for device in host_devices(jax.process_index())[:tp_size]]


def pod_engine_mesh(engine_mesh: Mesh) -> Mesh:
    """Every host's engine mesh, stacked along a leading `hosts` axis: the pod's trainer params (sharded
    over all hosts) convert in one collective into arrays replicated across hosts and laid out within
    each host exactly as that host's engine holds its weights, so no chip holds a whole extra copy."""
    tp = engine_mesh.devices.size
    rows = [host_devices(host)[:tp] for host in range(jax.process_count())]
    mine = list(engine_mesh.devices.flat)
    if rows[jax.process_index()] != mine:
        raise RuntimeError(f"weight push: the engine holds devices {[d.id for d in mine]}, expected this host's "
                           f"first {tp} by id, {[d.id for d in rows[jax.process_index()]]}, in that order")
    devices = np.array(rows, dtype=object).reshape((len(rows), *engine_mesh.devices.shape))
    return Mesh(devices, ("hosts", *engine_mesh.axis_names))


def as_engine_array(pod_array: jax.Array, engine_sharding: NamedSharding) -> jax.Array:
    """This host's shards of a pod-wide array, as one array on the engine's mesh (no copy)."""
    return jax.make_array_from_single_device_arrays(pod_array.shape, engine_sharding,
                                                    [shard.data for shard in pod_array.addressable_shards])

"""Orbax checkpoints of the train state plus the loop's position (data, RNG), written atomically.

A checkpoint labelled k holds the state after k completed steps; training resumes at step k.
Orbax writes into a temporary folder and renames it when complete, so a crash mid-save leaves the
previous checkpoint as the latest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


def check_shared_by_all_processes(directory: Path) -> None:
    """Refuse a local checkpoint folder that the hosts of a pod do not share.

    Orbax saves are collective: process 0 finalises the folder the others wrote into. On folders
    that are not shared (each TPU VM's own disk) a save hangs forever, so find out at start:
    process 0 writes a marker, and every process must see it.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    from trainer.config import ConfigError

    token = int(multihost_utils.broadcast_one_to_all(np.random.randint(1, 2**31 - 1, dtype=np.int64)))
    marker = directory / f".shared-check-{token}"
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        marker.touch()
    multihost_utils.sync_global_devices("checkpoint-dir-marker-written")
    seen = np.asarray(multihost_utils.process_allgather(np.array([marker.exists()]), tiled=True))
    multihost_utils.sync_global_devices("checkpoint-dir-marker-read")
    if jax.process_index() == 0:
        marker.unlink()
    if not seen.all():
        blind = ", ".join(str(i) for i in np.flatnonzero(~seen))
        raise ConfigError(f"checkpoint.dir: expected a folder every host shares (a gs:// bucket on a pod), "
                          f"received {str(directory)!r}: process(es) {blind} do not see what process 0 writes there")


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int):
        if "://" in str(directory):  # a bucket (gs://...): shared by construction
            self.directory = epath.Path(directory)
        else:
            self.directory = Path(directory).absolute()
            check_shared_by_all_processes(self.directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, rng_key: jax.Array, loop_position: dict[str, int]) -> None:
        position = dict(loop_position, rng_key=np.asarray(jax.random.key_data(rng_key)).tolist())
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         position=ocp.args.JsonSave(position)), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, jax.Array, dict[str, int]]:
        """The state laid out like abstract_state (ShapeDtypeStructs with shardings), RNG, position."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), position=ocp.args.JsonRestore()))
        position = dict(restored.position)
        rng_key = jax.random.wrap_key_data(np.asarray(position.pop("rng_key"), np.uint32))
        return restored.state, rng_key, position

    def close(self) -> None:
        self._manager.close()

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


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int):
        self.directory = Path(directory).absolute()
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

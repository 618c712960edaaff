"""The rollout backend interface: prompts in, completions out; weights pushed after each update; and what
a backend adds to the run's sizing before anything is built."""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from trainer.config import TrainerConfig
from trainer.model.qwen2 import Qwen2Config
from trainer.rollout.sampling import SamplingSettings
from trainer.runtime import Runtime


@dataclasses.dataclass
class RolloutOutput:
    """Completions for this process's rows, padded to the run's fixed completion length."""

    completion_ids_NxC: np.ndarray  # int32, pad after the stop token
    completion_mask_NxC: np.ndarray  # int32, 1 on generated tokens (stop token included)
    logps_NxC: np.ndarray | None  # float32 log-probs from the backend (0 where masked); None if it has none

    @property
    def lengths_N(self) -> np.ndarray:
        return self.completion_mask_NxC.sum(axis=1)


class RolloutBackend(abc.ABC):
    name: str

    @classmethod
    def resolve_settings(cls, config: TrainerConfig, model: Qwen2Config, runtime: Runtime) -> TrainerConfig:
        """The config with the backend's own auto / 0 values sized for this run (none by default)."""
        return config

    @classmethod
    def weight_bytes_per_device(cls, config: TrainerConfig, model: Qwen2Config) -> int:
        """Device memory the backend's own copy of the weights takes beside the trainer's (0: it uses theirs)."""
        return 0

    @abc.abstractmethod
    def generate(self, prompt_ids_NxP: np.ndarray, prompt_mask_NxP: np.ndarray, settings: SamplingSettings,
                 seed: int) -> RolloutOutput:
        """Completions for left-padded prompts (this process's rows)."""

    @abc.abstractmethod
    def push_weights(self, params) -> None:
        """Make the next generate use these trainer parameters."""

    def shutdown(self) -> None:
        """Release whatever the backend started; safe to call twice."""

    def timings(self) -> dict[str, float]:
        """Seconds spent in backend-specific phases since the last call (e.g. weight push)."""
        return {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False

"""Group-relative advantages and dynamic sampling, as pure NumPy functions of the step's rewards.

Rows are laid out group-major: the G = `group_size` samples of prompt j are rows j*G .. j*G+G-1, so
[N] rewards reshape to [B prompts, G] (`_BxG`).
Standard deviations are population ones (ddof 0), as in the upstream runner.
"""

from __future__ import annotations

import numpy as np

STD_EPS = 1e-4  # keeps groups with tiny spread from exploding; the upstream runner's value


def group_advantages(rewards_N: np.ndarray, group_size: int, scale: str = "group") -> np.ndarray:
    """A_i = (r_i - mean_group) / (std + eps); scale 'batch' uses the batch std, 'none' no division
    (Dr. GRPO's mean-only form)."""
    rewards_BxG = np.asarray(rewards_N, np.float64).reshape(-1, group_size)
    centered_BxG = rewards_BxG - rewards_BxG.mean(axis=1, keepdims=True)
    if scale == "group":
        centered_BxG = centered_BxG / (rewards_BxG.std(axis=1, keepdims=True) + STD_EPS)
    elif scale == "batch":
        centered_BxG = centered_BxG / (rewards_BxG.std() + STD_EPS)
    elif scale != "none":
        raise ValueError(f"scale: expected group, batch or none, received {scale!r}")
    return centered_BxG.reshape(-1).astype(np.float32)


def informative_rows(rewards_N: np.ndarray, group_size: int) -> np.ndarray:
    """True for rows of groups whose rewards are not all equal (DAPO's dynamic-sampling filter)."""
    rewards_BxG = np.asarray(rewards_N).reshape(-1, group_size)
    varied_B = rewards_BxG.max(axis=1) > rewards_BxG.min(axis=1)
    return np.repeat(varied_B, group_size)

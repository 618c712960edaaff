"""Rollouts through sglang-jax's in-process engine (pinned: sglang-jax 0.1.0rc0), on the trainer's chips.

The engine runs in single-process mode (scheduler and detokenizer as threads of this process), is
started once and shut down by the loop's exit stack on every exit path. There is no public
weight-update API: a push writes the trainer's parameters, mapped to the engine's layout, into the
model runner's state leaves, which its jitted forward reads on every call (same shapes, dtypes and
shardings, so nothing recompiles). On a pod every host runs its own engine on its own devices for its
own rows; one collective per push converts the params, sharded over all hosts, into each host's
engine layout.

With the radix (prefix) cache on (rollout.sglang.disable_radix_cache false), every weight push
flushes it, or prompts seen before would reuse keys and values computed under the old weights.

Sampling uses the engine's own random stream, seeded per host from (seed, process index), not the
step's seed: hosts draw different completions, but a resumed run does not replay the engine's
samples as it replays the JAX sampler's.

One module per job:
- settings: the engine's arguments, every auto / 0 value sized from the run, impossible sizes refused;
- weights: the trainer's parameter tree -> the engine's state layout, pure (no engine needed);
- pod: which devices each host's engine holds, and the collective that lays the weights out over them;
- patches_0_1_0rc0: every workaround for the pinned version, behind a version check (delete on upgrade);
- backend: the RolloutBackend that starts the engine, generates, pushes weights and shuts it down.
"""

from trainer.rollout.sglang_jax.backend import SglangJaxBackend

__all__ = ["SglangJaxBackend"]

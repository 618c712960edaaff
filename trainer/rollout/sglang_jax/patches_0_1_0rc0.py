"""Every workaround for sglang-jax 0.1.0rc0, the pinned version, in one place.

An upgrade deletes this file: `start_engine` becomes `Engine(**kwargs)`, `shutdown` becomes
`engine.shutdown()`, and MIN_DECODE_BATCH 1, once each item below is checked against the new version.
On any other version the engine refuses to start, naming this file, rather than patch what may have changed.

- Decoding a batch of one request fails on CPU with a sharding error: running requests and the
  precompiled batch sizes start at MIN_DECODE_BATCH = 2.
- A relative model path breaks the engine's tokenizer: the path is made absolute.
- The model runner's memory check counts `device_indexes` from the lowest device id of this host,
  while the mesh counts them from the job's: on hosts 1 and up of a TPU pod it matches no device.
  Its only caller gets the translated indexes (`memory_check_indexes`).
- The engine installs a SIGCHLD handler that reaps any child for its worker processes; in
  single-process mode it has none, and the handler would steal exit codes from `subprocess`: the
  previous handler is put back.
- The first generate installs a native (absl) SIGTERM handler that aborts the process: one generate of
  a single token at start, before the loop installs its own handler, keeps SIGTERM a clean
  checkpoint-and-exit.
- Without a comm backend (single-process mode) the scheduler thread polls its sockets in a tight loop
  and burns a whole core between rollouts, which the update phase needs: its idle hook sleeps 1 ms
  (server_args.sleep_on_idle exists but nothing reads it).
- Engine.shutdown ends with kill_process_tree, which in single-process mode (no child processes of
  its own) SIGKILLs every other child of the trainer, W&B's service among them: `shutdown` does the
  rest of it.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import signal
import time
from pathlib import Path

import jax

from trainer.rollout.sglang_jax.pod import job_id_offset

VERSION = "0.1.0rc0"
MIN_DECODE_BATCH = 2


def check_version() -> None:
    installed = importlib.metadata.version("sglang-jax")
    if installed != VERSION:
        raise RuntimeError(f"sglang-jax {installed} is installed; {__file__} works around {VERSION}: check each "
                           f"workaround against {installed}, then drop the ones it no longer needs")


def start_engine(engine_class, kwargs: dict, pad_id: int):
    """engine_class(**kwargs) with every start-up workaround applied (pad_id: a token to generate from)."""
    check_version()
    kwargs = dict(kwargs, model_path=str(Path(kwargs["model_path"]).absolute()))
    _count_memory_per_host(kwargs["device_indexes"])
    previous_sigchld = signal.getsignal(signal.SIGCHLD)
    engine = engine_class(**kwargs)
    signal.signal(signal.SIGCHLD, previous_sigchld)
    engine.generate(input_ids=[[pad_id]] * MIN_DECODE_BATCH, sampling_params={"max_new_tokens": 1})
    _sleep_when_idle(engine.scheduler_info["scheduler"])
    return engine


def shutdown(engine) -> None:
    """Engine.shutdown minus its kill_process_tree."""
    atexit.unregister(engine.shutdown)
    if engine.tokenizer_manager is not None:
        engine.tokenizer_manager.shutdown()
    if engine.send_to_rpc is not None:
        engine.send_to_rpc.close()


def memory_check_indexes(device_indexes: list[int] | None, job_offset: int, host_offset: int) -> list[int] | None:
    """The same devices as the memory check counts them: from the lowest id of this host's devices."""
    if device_indexes is None:
        return None
    return [index + job_offset - host_offset for index in device_indexes]


def _count_memory_per_host(device_indexes: list[int] | None) -> None:
    """Patch the model runner's memory check (the engine's only caller) with the translation above."""
    from sgl_jax.srt.model_executor import model_runner

    if device_indexes is None or getattr(model_runner.get_available_device_memory, "per_host", False):
        return
    check = model_runner.get_available_device_memory
    job_offset = job_id_offset()
    host_offset = min(device.id for device in jax.local_devices())

    def per_host(device, distributed=False, empty_cache=True, device_indexes=None):
        return check(device, distributed, empty_cache, memory_check_indexes(device_indexes, job_offset, host_offset))

    per_host.per_host = True
    model_runner.get_available_device_memory = per_host


def _sleep_when_idle(scheduler, seconds: float = 0.001) -> None:
    idle = scheduler.on_idle

    def on_idle():
        idle()
        time.sleep(seconds)

    scheduler.on_idle = on_idle

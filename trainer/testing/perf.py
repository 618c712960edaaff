"""Measurements the benchmarks share: memory bandwidth, matmul peak, compile counting, peak memory."""

from __future__ import annotations

import resource
import time

import jax
import jax.numpy as jnp
from jax import monitoring

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compile_count = 0


def _on_event(name: str, duration: float, **kwargs) -> None:
    global _compile_count
    if name == _COMPILE_EVENT:
        _compile_count += 1


monitoring.register_event_duration_secs_listener(_on_event)


def compile_count() -> int:
    """XLA compilations in this process so far."""
    return _compile_count


def best_time(fn, repeats: int = 5) -> float:
    """Fastest of `repeats` timed calls of fn() (which must block until its result is ready)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def memory_bandwidth_bytes_per_s(megabytes: int = 256) -> float:
    """Read bandwidth of the default device: one jitted sum over a large float32 array."""
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    return x.nbytes / best_time(lambda: total(x).block_until_ready())


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32) -> float:
    """FLOP/s of one jitted [n, n] x [n, n] jnp.dot on the default device."""
    a = jnp.ones((n, n), dtype)
    dot = jax.jit(jnp.dot)
    return 2 * n**3 / best_time(lambda: dot(a, a).block_until_ready())


def peak_memory_bytes() -> dict[str, float]:
    """Device peak where the runtime reports it (TPU/GPU), and this process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = {"host_peak_rss_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}
    if "peak_bytes_in_use" in stats:
        peak["device_peak_bytes"] = float(stats["peak_bytes_in_use"])
    return peak

"""Measurements the benchmarks share: memory bandwidth, matmul peak, a decode step's matmul rate, compile
counting, peak memory."""

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


def weight_read_bytes_per_s(rows: int, k: int, n: int, dtype=jnp.float32, weights: int = 16, reads: int = 20) -> float:
    """Weight bytes per second that jitted [rows, k] x [k, n] jnp.dots read: a decode step's matmul rate.
    `weights` distinct weights are read in turn, as a decode step reads its layers', so that they come
    from memory rather than a cache that still holds the last one."""
    kernels = [jnp.full((k, n), 1e-3 * (i + 1), dtype) for i in range(weights)]

    @jax.jit
    def read_all(x, kernels):
        def one_pass(_, acc_RxN):
            for kernel in kernels:  # each product feeds the next, so none can be skipped or reordered
                acc_RxN = acc_RxN + (x + acc_RxN[:, :1]) @ kernel
            return acc_RxN

        return jax.lax.fori_loop(0, reads, one_pass, jnp.zeros((rows, n), dtype))

    x = jnp.ones((rows, k), dtype)
    return reads * weights * k * n * jnp.dtype(dtype).itemsize / best_time(lambda: read_all(x, kernels).block_until_ready())


def peak_memory_bytes() -> dict[str, float]:
    """Device peak where the runtime reports it (TPU/GPU), and this process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = {"host_peak_rss_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}
    if "peak_bytes_in_use" in stats:
        peak["device_peak_bytes"] = float(stats["peak_bytes_in_use"])
    return peak

"""Rollouts through sglang-jax's in-process engine (pinned: sglang-jax 0.1.0rc0), on the trainer's chips.

The engine runs in single-process mode (scheduler and detokenizer as threads of this process), is
started once and shut down by the loop's exit stack on every exit path. There is no public
weight-update API: a push writes the trainer's parameters, mapped to the engine's layout, into the
model runner's state leaves, which its jitted forward reads on every call (same shapes, dtypes and
shardings, so nothing recompiles). On a pod every host runs its own engine on its own devices for its
own rows; one collective per push converts the params, sharded over all hosts, into each host's
engine layout.

Facts of 0.1.0rc0 that shape the settings: decoding a batch of one request fails on CPU with a
sharding error, so batch sizes are padded to at least 2; the KV pool defaults to about half of the
memory, so it is always capped at what the run needs (rows x context length); and with the overlap
scheduler about half of the engine starts on CPU return log-probs (and samples) that disagree with
the weights by up to 0.5 nats, so it is off unless rollout.sglang.overlap_schedule is set.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from trainer.config import ConfigError, SglangSection, TrainerConfig
from trainer.model.qwen2 import Qwen2Config
from trainer.model.tokenizer import ChatTokenizer
from trainer.rollout.base import RolloutBackend, RolloutOutput
from trainer.runtime import Runtime
from trainer.sampling import SamplingSettings

SGLANG_JAX_VERSION = "0.1.0rc0"
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "bf16": 2}
_MAX_CHUNKED_PREFILL = 16384


def _align128(n: int) -> int:
    return (n + 127) // 128 * 128


def kv_bytes_per_token(model: Qwen2Config, kv_dtype: str) -> int:
    """KV pool bytes per token, as sglang-jax sizes it (head_dim rounded up to 128)."""
    return model.num_hidden_layers * 2 * model.num_key_value_heads * _align128(model.head_dim) * _DTYPE_BYTES[kv_dtype]


def free_device_bytes(platform: str) -> int:
    if platform == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0))


def _powers_of_two_from_2(limit: int) -> list[int]:
    sizes, size = [], 2
    while size < limit:
        sizes.append(size)
        size *= 2
    return sizes + [limit]


def resolve_engine_section(config: TrainerConfig, model: Qwen2Config, runtime: Runtime) -> SglangSection:
    """Engine settings with every auto / 0 value sized from this run; impossible sizes fail here."""
    s, rollout = config.rollout.sglang, config.rollout
    rows = config.rows // runtime.process_count
    # The engine rejects a request whose prompt + max_new_tokens reaches context_length.
    needed_context = rollout.global_length + rollout.max_length_sample + 1
    context = s.context_length or needed_context
    if context < needed_context:
        raise ConfigError(f"rollout.sglang.context_length: expected at least rollout.global_length + "
                          f"rollout.max_length_sample + 1 = {needed_context}, received {context}")
    running = s.max_running_requests or max(rows, 2)
    if running < 2:
        raise ConfigError(f"rollout.sglang.max_running_requests: expected at least 2 (sglang-jax "
                          f"{SGLANG_JAX_VERSION} fails to decode a batch of one), received {running}")
    total = s.max_total_tokens or rows * (context + s.page_size)
    if total < context:
        raise ConfigError(f"rollout.sglang.max_total_tokens: expected at least one request's context of "
                          f"{context} tokens, received {total}")
    dtype = config.model.dtype if s.dtype == "auto" else s.dtype
    kv_dtype = ("bf16" if dtype == "bfloat16" else "float32") if s.kv_cache_dtype == "auto" else s.kv_cache_dtype
    if kv_dtype == "float32" and dtype != "float32":
        raise ConfigError(f"rollout.sglang.kv_cache_dtype: expected auto or bf16 with a {dtype} engine "
                          "(sglang-jax keeps the KV cache in the model dtype or bf16), received 'float32'")
    # One CPU device does on one host; on a TPU host, and on every host of a pod, the engine takes all
    # of the host's devices (the pod's weight push lays the weights out over exactly those).
    single_cpu = runtime.platform == "cpu" and runtime.process_count == 1
    tp = s.tp_size or (1 if single_cpu else jax.local_device_count())
    if runtime.process_count > 1 and tp != jax.local_device_count():
        raise ConfigError(f"rollout.sglang.tp_size: expected each host's device count "
                          f"{jax.local_device_count()} (or 0 for it) on a pod, received {tp}")
    pool_bytes = total * kv_bytes_per_token(model, kv_dtype) // tp
    free = free_device_bytes(runtime.platform)
    if pool_bytes > free:
        raise ConfigError(f"rollout.sglang.max_total_tokens: expected a KV pool that fits the {free / 2**30:.2f} "
                          f"GiB free per device ({total} tokens need {pool_bytes / 2**30:.2f} GiB), received {total}")
    return dataclasses.replace(
        s, context_length=context, max_running_requests=running, max_total_tokens=total, dtype=dtype,
        kv_cache_dtype=kv_dtype, tp_size=tp,
        # The pool is capped by max_total_tokens; the fraction only has to leave that much room.
        mem_fraction_static=s.mem_fraction_static or 0.9,
        chunked_prefill_size=s.chunked_prefill_size or min(rows * rollout.global_length, _MAX_CHUNKED_PREFILL),
        attention_backend=("native" if runtime.platform == "cpu" else "fa") if s.attention_backend == "auto"
        else s.attention_backend,
        precompile_bs_paddings=s.precompile_bs_paddings or _powers_of_two_from_2(running))


def engine_kwargs(config: TrainerConfig, runtime: Runtime, model_dir: Path) -> dict:
    s = config.rollout.sglang
    return dict(
        model_path=str(Path(model_dir).absolute()),  # a relative path breaks the tokenizer in 0.1.0rc0
        device=runtime.platform, dtype=s.dtype, tp_size=s.tp_size,
        # sglang-jax spells the KV dtype "auto" (the model dtype) or "bf16".
        kv_cache_dtype="bf16" if s.kv_cache_dtype == "bf16" and s.dtype != "bfloat16" else "auto",
        attention_backend=s.attention_backend, mem_fraction_static=s.mem_fraction_static,
        max_total_tokens=s.max_total_tokens, context_length=s.context_length,
        max_running_requests=s.max_running_requests, max_prefill_tokens=s.chunked_prefill_size,
        chunked_prefill_size=s.chunked_prefill_size, page_size=s.page_size,
        disable_precompile=not s.precompile, precompile_bs_paddings=s.precompile_bs_paddings,
        precompile_token_paddings=s.precompile_token_paddings or None,
        disable_radix_cache=s.disable_radix_cache, enable_single_process=True,
        disable_overlap_schedule=not s.overlap_schedule,
        random_seed=config.seed, log_level="error", skip_server_warmup=True,
        device_indexes=local_device_indexes(s.tp_size))


def job_id_offset() -> int:
    """The lowest device id of the whole job, from which sglang-jax's mesh counts device indexes."""
    return min(device.id for device in jax.devices())


def host_devices(host: int) -> list:
    """One host's devices by id: every process computes the same list for every host."""
    return sorted((d for d in jax.devices() if d.process_index == host), key=lambda d: d.id)


def local_device_indexes(tp_size: int) -> list[int] | None:
    """On a pod each host runs its own engine for its own rows, on its own first tp_size devices: left
    alone, the engine would build its mesh over every device of the job and fail. sglang-jax's mesh
    counts these indexes from the lowest device id of the whole job."""
    if jax.process_count() == 1:
        return None
    offset = job_id_offset()
    return [device.id - offset for device in host_devices(jax.process_index())[:tp_size]]


def memory_check_indexes(device_indexes: list[int] | None, job_offset: int, host_offset: int) -> list[int] | None:
    """The same devices as sglang-jax 0.1.0rc0's memory check counts them: from the lowest id of this
    host's devices, not of the job's. Without this, hosts 1 and up of a TPU pod match no device there."""
    if device_indexes is None:
        return None
    return [index + job_offset - host_offset for index in device_indexes]


def _count_memory_per_host(device_indexes: list[int] | None) -> None:
    """Patch the model runner's memory check (the pinned engine's only caller) with the translation above."""
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


def pod_engine_mesh(engine_mesh: Mesh) -> Mesh:
    """Every host's engine mesh, stacked along a leading `hosts` axis: the pod's trainer params (sharded
    over all hosts) convert in one collective into arrays replicated across hosts and laid out within
    each host exactly as that host's engine holds its weights, so no chip holds a whole extra copy.
    Built from global facts only, so every process compiles the same collective."""
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


# --- the weight push -------------------------------------------------------------------------------

# Flax leaf under params["layers"]["layer"] -> engine path inside model.layers[i], and which axis
# holds attention heads (the engine may pad head_dim or repeat KV heads along it).
_LAYER_LEAVES = (
    (("input_layernorm", "scale"), ("input_layernorm", "scale"), None),
    (("post_attention_layernorm", "scale"), ("post_attention_layernorm", "scale"), None),
    (("q_proj", "kernel"), ("self_attn", "q_proj", "weight"), ("q", -1)),
    (("q_proj", "bias"), ("self_attn", "q_proj", "bias"), ("q", -1)),
    (("k_proj", "kernel"), ("self_attn", "k_proj", "weight"), ("kv", -1)),
    (("k_proj", "bias"), ("self_attn", "k_proj", "bias"), ("kv", -1)),
    (("v_proj", "kernel"), ("self_attn", "v_proj", "weight"), ("kv", -1)),
    (("v_proj", "bias"), ("self_attn", "v_proj", "bias"), ("kv", -1)),
    (("o_proj", "kernel"), ("self_attn", "o_proj", "weight"), ("q", 0)),
    (("gate_proj", "kernel"), ("mlp", "gate_proj", "weight"), None),
    (("up_proj", "kernel"), ("mlp", "up_proj", "weight"), None),
    (("down_proj", "kernel"), ("mlp", "down_proj", "weight"), None),
)


@dataclasses.dataclass(frozen=True)
class HeadLayout:
    heads: int
    kv_heads: int
    head_dim: int


def match_heads(value, axis: int, ours: HeadLayout, engine: HeadLayout, kind: str):
    """Zero-pad each head from our head_dim to the engine's and repeat KV heads the engine replicates."""
    heads, engine_heads = (ours.heads, engine.heads) if kind == "q" else (ours.kv_heads, engine.kv_heads)
    if (heads, ours.head_dim) == (engine_heads, engine.head_dim):
        return value
    if engine_heads % heads or engine.head_dim < ours.head_dim:
        raise ValueError(f"cannot map {heads} heads x {ours.head_dim} onto the engine's "
                         f"{engine_heads} x {engine.head_dim}")
    axis = axis % value.ndim
    split = value.reshape(value.shape[:axis] + (heads, ours.head_dim) + value.shape[axis + 1:])
    pad = [(0, 0)] * split.ndim
    pad[axis + 1] = (0, engine.head_dim - ours.head_dim)
    split = jax.numpy.repeat(jax.numpy.pad(split, pad), engine_heads // heads, axis=axis)
    return split.reshape(value.shape[:axis] + (engine_heads * engine.head_dim,) + value.shape[axis + 1:])


def engine_tensors(params: dict, config: Qwen2Config, ours: HeadLayout, engine: HeadLayout) -> dict:
    """Engine state path -> array in the engine's layout (its kernels are [in, out] like ours)."""
    tensors = {("model", "embed_tokens", "embedding"): params["embed_tokens"]["embedding"],
               ("model", "norm", "scale"): params["norm"]["scale"]}
    if not config.tie_word_embeddings:
        tensors[("lm_head", "embedding")] = params["lm_head"]["kernel"].T  # the engine keeps [vocab, hidden]
    layer = params["layers"]["layer"]
    for i in range(config.num_hidden_layers):
        for (module, leaf), engine_path, heads in _LAYER_LEAVES:
            value = layer[module][leaf][i]
            if heads is not None:
                value = match_heads(value, heads[1], ours, engine, heads[0])
            tensors[("model", "layers", i, *engine_path)] = value
    return tensors


def _sleep_when_idle(scheduler, seconds: float = 0.001) -> None:
    """Without a comm backend (single-process mode) the 0.1.0rc0 scheduler thread polls its sockets in
    a tight loop and burns a whole core between rollouts, which the update phase needs. Its idle hook
    gets a 1 ms sleep (server_args.sleep_on_idle exists but nothing reads it)."""
    idle = scheduler.on_idle

    def on_idle():
        idle()
        time.sleep(seconds)

    scheduler.on_idle = on_idle


def _state_path(path) -> tuple:
    """('model', 'layers', 0, 'mlp', ...) from a pytree path of the engine's nnx state, without the
    trailing `.value` of the Param."""
    keys = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return keys[:-1] if keys[-1] == "value" else keys


class SglangJaxBackend(RolloutBackend):
    name = "sglang_jax"

    def __init__(self, config: TrainerConfig, model_config: Qwen2Config, runtime: Runtime,
                 tokenizer: ChatTokenizer, model_dir: Path):
        os.environ.setdefault("JAX_PLATFORMS", runtime.platform)  # the engine asserts it matches `device`
        from sgl_jax.srt.entrypoints.engine import Engine

        self.model_config = model_config
        self.stop_ids = list(tokenizer.stop_ids)
        self.pad_id = tokenizer.pad_id
        previous_sigchld = signal.getsignal(signal.SIGCHLD)
        kwargs = engine_kwargs(config, runtime, model_dir)
        _count_memory_per_host(kwargs["device_indexes"])
        self.engine = Engine(**kwargs)
        # The engine installs a SIGCHLD handler that reaps any child for its worker processes; in
        # single-process mode it has none, and the handler would steal exit codes from subprocess.
        signal.signal(signal.SIGCHLD, previous_sigchld)
        # The first generate installs a native (absl) SIGTERM handler that aborts the process; letting
        # it happen now, before the loop installs its own handler, keeps SIGTERM a clean checkpoint-and-exit.
        self.engine.generate(input_ids=[[self.pad_id], [self.pad_id]], sampling_params={"max_new_tokens": 1})
        scheduler = self.engine.scheduler_info["scheduler"]
        self.runner = scheduler.tp_worker.worker.model_runner
        _sleep_when_idle(scheduler)
        attn = self.runner.model.model.layers[0].self_attn
        self.engine_heads = HeadLayout(attn.q_head_num, attn.kv_head_num, attn.head_dim)
        self.our_heads = HeadLayout(model_config.num_attention_heads, model_config.num_key_value_heads,
                                    model_config.head_dim)
        self._push_s = 0.0
        self._convert = None  # built on the first push, when the params' shardings are known
        self._target_indices: list[int] = []

    def generate(self, prompt_ids_NxP, prompt_mask_NxP, settings: SamplingSettings, seed: int) -> RolloutOutput:
        prompts = [row[mask.astype(bool)].tolist() for row, mask in zip(prompt_ids_NxP, prompt_mask_NxP, strict=True)]
        sampling = {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                    "top_p": settings.top_p, "top_k": settings.top_k, "stop_token_ids": self.stop_ids,
                    "ignore_eos": settings.ignore_eos}
        results = self.engine.generate(input_ids=prompts, sampling_params=sampling, return_logprob=True)
        return self._pack(results, settings.max_new_tokens)

    def _pack(self, results: list[dict], width: int) -> RolloutOutput:
        """Ragged engine outputs into the trainer's fixed [rows, max_new_tokens] arrays."""
        n = len(results)
        ids = np.full((n, width), self.pad_id, np.int32)
        mask = np.zeros((n, width), np.int32)
        logps = np.zeros((n, width), np.float32)
        for row, result in enumerate(results):
            # output_ids drops a matched stop token; the log-prob triples (logprob, id, text) keep it,
            # and the trainer must see it (the policy learns when to stop).
            triples = result["meta_info"]["output_token_logprobs"][:width]
            ids[row, :len(triples)] = [token for _, token, _ in triples]
            mask[row, :len(triples)] = 1
            logps[row, :len(triples)] = [logprob for logprob, _, _ in triples]
        return RolloutOutput(ids, mask, logps)

    def push_weights(self, params) -> None:
        from flax import nnx

        start = time.perf_counter()
        if self._convert is None:
            self._convert = self._make_converter(params)
        leaves = list(self.runner.model_state_leaves)
        for index, value in zip(self._target_indices, self._convert(params), strict=True):
            leaves[index] = value
        jax.block_until_ready(leaves)
        self.runner.model_state_leaves = leaves  # what the engine's jitted forward reads on every call
        nnx.update(self.runner.model, jax.tree_util.tree_unflatten(self.runner._model_state_def, leaves))
        self._push_s += time.perf_counter() - start

    def _make_converter(self, params):
        """One jitted function from trainer params to the engine's leaves (layout, dtype, sharding), so a
        push is a single dispatch. Leaves are matched by path through the treedef the engine's forward
        was compiled with."""
        mapped = jax.eval_shape(lambda p: engine_tensors(p, self.model_config, self.our_heads, self.engine_heads),
                                params)
        leaves = self.runner.model_state_leaves
        state = jax.tree_util.tree_unflatten(self.runner._model_state_def, leaves)
        targets = [(i, _state_path(path)) for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0])
                   if _state_path(path) in mapped]
        if len(targets) != len(mapped):
            raise RuntimeError(f"weight push: {len(targets)} of {len(mapped)} tensors found in the engine's state")
        self._target_indices = [i for i, _ in targets]
        dtypes = [leaves[i].dtype for i in self._target_indices]

        def convert(p):
            tensors = engine_tensors(p, self.model_config, self.our_heads, self.engine_heads)
            return [tensors[key].astype(dtype) for (_, key), dtype in zip(targets, dtypes, strict=True)]

        engine_shardings = [leaves[i].sharding for i in self._target_indices]
        if jax.process_count() == 1:
            return jax.jit(convert, out_shardings=engine_shardings)
        pod_mesh = pod_engine_mesh(self.runner.mesh)
        to_pod = jax.jit(convert, out_shardings=[NamedSharding(pod_mesh, e.spec) for e in engine_shardings])
        return lambda p: [as_engine_array(a, e) for a, e in zip(to_pod(p), engine_shardings, strict=True)]

    def timings(self) -> dict[str, float]:
        push_s, self._push_s = self._push_s, 0.0
        return {"time/engine_weight_push_s": push_s}

    def shutdown(self) -> None:
        """Engine.shutdown minus its kill_process_tree: in single-process mode the engine has no child
        processes, and that call would SIGKILL every other child of the trainer (W&B's service)."""
        engine, self.engine = self.engine, None
        if engine is None:
            return
        atexit.unregister(engine.shutdown)
        if engine.tokenizer_manager is not None:
            engine.tokenizer_manager.shutdown()
        if engine.send_to_rpc is not None:
            engine.send_to_rpc.close()

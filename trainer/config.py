"""The trainer's configuration: dataclasses that validate themselves, and how a run's values are merged.

Precedence, lowest first: the built-in defaults (the cpu-tiny preset) -> a named preset -> a YAML file
-> repeated `--set a.b=value` (value parsed as YAML) -> the upstream environment variables
(MODEL_PATH, STEPS, ...). Every mistake is a `ConfigError` naming the key, the value received and
what was expected.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value that cannot run; the CLI turns it into exit code 2."""


def _fail(key: str, expected: str, value: Any) -> typing.NoReturn:
    raise ConfigError(f"{key}: expected {expected}, received {value!r}")


def _positive_int(key: str, value: int) -> None:
    if value <= 0:
        _fail(key, "a positive integer", value)


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        _fail(key, "a non-negative number", value)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(key, "one of " + ", ".join(allowed), value)


DTYPES = ("auto", "float32", "bfloat16")
BACKENDS = ("jax", "sglang_jax")
REWARD_NAMES = ("correctness", "format", "tag_count")


@dataclasses.dataclass
class ModelSection:
    dtype: str = "auto"  # compute dtype; auto: bfloat16 on TPU, float32 elsewhere
    param_dtype: str = "float32"  # master weights and optimizer state
    remat: bool = False  # recompute layer activations in the backward pass

    def __post_init__(self):
        _one_of("model.dtype", self.dtype, DTYPES)
        _one_of("model.param_dtype", self.param_dtype, DTYPES[1:])


@dataclasses.dataclass
class DataSection:
    source: str = "synthetic_arithmetic"  # or gsm8k
    path: str = ""  # local folder of {train,test}*.jsonl|parquet; empty: the hub's openai/gsm8k main
    system_prompt: str = ""  # cpu-tiny: none, the prompt stays short for the tiny model
    shuffle: bool = True
    synthetic_max_operand: int = 1
    synthetic_size: int = 1000

    def __post_init__(self):
        _one_of("data.source", self.source, ("synthetic_arithmetic", "gsm8k"))
        _positive_int("data.synthetic_max_operand", self.synthetic_max_operand)
        _positive_int("data.synthetic_size", self.synthetic_size)


@dataclasses.dataclass
class SglangSection:
    """sglang-jax engine arguments; 0 / auto values are sized from the run before the engine starts."""

    mem_fraction_static: float = 0.0  # 0: auto (small, since the pool is capped by max_total_tokens)
    max_total_tokens: int = 0  # KV pool tokens; 0: rows per process x (prompt bucket + new tokens)
    context_length: int = 0  # 0: prompt bucket + new tokens
    dtype: str = "auto"  # auto: model.dtype
    kv_cache_dtype: str = "auto"  # auto, bf16 (sglang-jax's spelling), float32
    tp_size: int = 0  # 0: 1 on CPU, every local chip on TPU
    page_size: int = 1
    max_running_requests: int = 0  # 0: rows per process
    chunked_prefill_size: int = 0  # 0: rows per process x prompt bucket
    attention_backend: str = "auto"  # auto: native on CPU, fa on TPU
    precompile: bool = False  # compile the engine's padding buckets at start
    precompile_token_paddings: list[int] = dataclasses.field(default_factory=list)
    precompile_bs_paddings: list[int] = dataclasses.field(default_factory=list)
    disable_radix_cache: bool = True  # GRPO prompts repeat only within a group; weights change every step
    overlap_schedule: bool = False  # 0.1.0rc0's overlap scheduler races on CPU (see rollout/sglang_jax.py)

    def __post_init__(self):
        if not 0.0 <= self.mem_fraction_static < 1.0:
            _fail("rollout.sglang.mem_fraction_static", "a number in [0, 1)", self.mem_fraction_static)
        for key in ("max_total_tokens", "context_length", "max_running_requests", "chunked_prefill_size"):
            _non_negative(f"rollout.sglang.{key}", getattr(self, key))
        _non_negative("rollout.sglang.tp_size", self.tp_size)
        _positive_int("rollout.sglang.page_size", self.page_size)
        _one_of("rollout.sglang.dtype", self.dtype, DTYPES)
        _one_of("rollout.sglang.kv_cache_dtype", self.kv_cache_dtype, ("auto", "bf16", "float32"))
        _one_of("rollout.sglang.attention_backend", self.attention_backend, ("auto", "native", "fa"))


@dataclasses.dataclass
class RolloutSection:
    backend: str = "jax"
    batch_size: int = 16  # prompts per step, over all processes
    num_pre_q: int = 8  # samples per prompt (the GRPO group)
    global_length: int = 32  # prompt bucket: prompts are left-padded to this many tokens
    max_length_sample: int = 6  # new tokens per completion
    prefill_buckets: list[int] = dataclasses.field(default_factory=list)  # jax sampler; empty: [global_length]
    temperature: float = 1.0
    top_k: int = -1  # -1: off
    top_p: float = 1.0
    ignore_eos: bool = False  # stop tokens do not end a completion: exactly max_length_sample new tokens
    sglang: SglangSection = dataclasses.field(default_factory=SglangSection)

    def __post_init__(self):
        _one_of("rollout.backend", self.backend, BACKENDS)
        for key in ("batch_size", "num_pre_q", "global_length", "max_length_sample"):
            _positive_int(f"rollout.{key}", getattr(self, key))
        for bucket in self.prefill_buckets:
            if not 0 < bucket <= self.global_length:
                _fail("rollout.prefill_buckets", f"sizes in (0, rollout.global_length={self.global_length}]",
                      self.prefill_buckets)
        if self.temperature <= 0:
            _fail("rollout.temperature", "a positive number (greedy decoding is for evaluation)", self.temperature)
        if self.top_k == 0 or self.top_k < -1:
            _fail("rollout.top_k", "-1 (off) or a positive integer", self.top_k)
        if not 0.0 < self.top_p <= 1.0:
            _fail("rollout.top_p", "a number in (0, 1]", self.top_p)


@dataclasses.dataclass
class TrainSection:
    loss_type: str = "dapo"  # grpo: per-sequence mean; dapo: token mean; dr_grpo: / (rows x max_length_sample)
    beta: float = 0.0  # KL weight; > 0 keeps a frozen reference copy of the initial weights
    kl_estimator: str = "k3"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    num_iterations: int = 1  # updates per rollout batch (mu); > 1 recomputes old log-probs first
    micro_batch_size: int = 32  # rows per gradient-accumulation micro-batch, over all devices
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO: mean-only advantages)
    dynamic_sampling: bool = False  # drop (zero-weight) groups whose rewards are all equal
    mask_truncated_completions: bool = False
    importance_sampling_cap: float = 0.0  # > 0: truncated IS weight min(pi_old/pi_rollout, cap) per token

    def __post_init__(self):
        _one_of("train.loss_type", self.loss_type, ("grpo", "dapo", "dr_grpo"))
        _non_negative("train.beta", self.beta)
        _one_of("train.kl_estimator", self.kl_estimator, ("k1", "k3"))
        for key in ("epsilon_low", "epsilon_high"):
            if not 0.0 < getattr(self, key) < 1.0:
                _fail(f"train.{key}", "a number in (0, 1)", getattr(self, key))
        _positive_int("train.num_iterations", self.num_iterations)
        _positive_int("train.micro_batch_size", self.micro_batch_size)
        _one_of("train.scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        _non_negative("train.importance_sampling_cap", self.importance_sampling_cap)


@dataclasses.dataclass
class OptimSection:
    name: str = "adamw"  # or lion
    learning_rate: float = 1e-2
    warmup_steps: int = 2
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate x this
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.99
    max_grad_norm: float = 1.0  # 0: no clipping

    def __post_init__(self):
        _one_of("optim.name", self.name, ("adamw", "lion"))
        if self.learning_rate <= 0:
            _fail("optim.learning_rate", "a positive number", self.learning_rate)
        _non_negative("optim.warmup_steps", self.warmup_steps)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            _fail("optim.min_lr_ratio", "a number in [0, 1]", self.min_lr_ratio)
        for key in ("weight_decay", "max_grad_norm"):
            _non_negative(f"optim.{key}", getattr(self, key))
        for key in ("b1", "b2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                _fail(f"optim.{key}", "a number in [0, 1)", getattr(self, key))


def import_reward(path: str) -> typing.Callable[[str, str], float] | None:
    """The function `package.module:function` names (called as f(completion, gold) -> float), or None."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        return None
    try:
        function = getattr(importlib.import_module(module_name), attribute, None)
    except ImportError:
        return None
    return function if callable(function) else None


@dataclasses.dataclass
class RewardSection:
    # Built-in names, or `package.module:function` for a reward of your own (f(completion, gold) -> float).
    weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"correctness": 1.0, "format": 0.0, "tag_count": 0.0})
    correctness_mode: str = "any"  # strict (####), boxed, flexible (last number), any (first that matches)

    def __post_init__(self):
        for name in self.weights:
            if name not in REWARD_NAMES and import_reward(name) is None:
                expected = "a built-in reward" + ("" if ":" in name else f" (one of {', '.join(REWARD_NAMES)})")
                _fail("reward.weights", expected + " or an importable module:function", name)
        if not any(self.weights.values()):
            _fail("reward.weights", "at least one non-zero weight", self.weights)
        _one_of("reward.correctness_mode", self.correctness_mode, ("strict", "boxed", "flexible", "any"))


@dataclasses.dataclass
class EvalSection:
    every_steps: int = 0  # 0: off; greedy pass@1 on the test split, one problem per rollout row
    batches: int = 1
    split: str = "test"

    def __post_init__(self):
        _non_negative("eval.every_steps", self.every_steps)
        _positive_int("eval.batches", self.batches)


@dataclasses.dataclass
class CheckpointSection:
    every_steps: int = 0  # 0: only on SIGTERM
    dir: str = ""  # empty: <out_dir>/checkpoints
    max_to_keep: int = 2
    resume: bool = True  # restore the latest checkpoint in dir when one exists

    def __post_init__(self):
        _non_negative("checkpoint.every_steps", self.every_steps)
        _positive_int("checkpoint.max_to_keep", self.max_to_keep)


@dataclasses.dataclass
class WandbSection:
    mode: str = "disabled"  # online | offline | disabled
    project: str = "tpuctl-grpo"
    name: str = ""
    entity: str = ""

    def __post_init__(self):
        _one_of("wandb.mode", self.mode, ("online", "offline", "disabled"))


@dataclasses.dataclass
class TrainerConfig:
    model_path: str = "tiny-random"  # a Hugging Face folder or hub id; tiny-random builds the test model
    steps: int = 40
    seed: int = 0
    out_dir: str = "runs/cpu-tiny"
    mesh_shape: str = "1,-1,1"  # dp,fsdp,tp; -1 takes the remaining devices
    distributed: bool = False  # call jax.distributed.initialize() bare (TPU pods); see trainer.runtime
    distributed_timeout_s: int = 120
    num_cpu_devices: int = 0  # > 0: that many CPU devices per process (JAX_NUM_CPU_DEVICES)
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    rollout: RolloutSection = dataclasses.field(default_factory=RolloutSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    reward: RewardSection = dataclasses.field(default_factory=RewardSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    wandb: WandbSection = dataclasses.field(default_factory=WandbSection)

    def __post_init__(self):
        if not self.model_path:
            _fail("model_path", "a model folder or hub id (set MODEL_PATH or --set model_path=...)", "")
        _positive_int("steps", self.steps)
        _positive_int("distributed_timeout_s", self.distributed_timeout_s)
        _non_negative("num_cpu_devices", self.num_cpu_devices)
        parse_mesh_shape(self.mesh_shape)
        rows = self.rollout.batch_size * self.rollout.num_pre_q
        if rows % self.train.micro_batch_size:
            _fail("train.micro_batch_size",
                  f"a divisor of rollout.batch_size x rollout.num_pre_q = {rows}", self.train.micro_batch_size)
        if self.data.source == "synthetic_arithmetic" and self.reward.correctness_mode == "boxed":
            _fail("reward.correctness_mode", "not boxed with data.source synthetic_arithmetic", "boxed")

    @property
    def rows(self) -> int:
        """Sequences per step over all processes: prompts x group size."""
        return self.rollout.batch_size * self.rollout.num_pre_q


def parse_mesh_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        _fail("mesh_shape", "three comma-separated integers dp,fsdp,tp", text)
    if len(dims) != 3 or any(d == 0 or d < -1 for d in dims) or dims.count(-1) > 1:
        _fail("mesh_shape", "dp,fsdp,tp with positive sizes and at most one -1", text)
    return dims


# --- merging and parsing -------------------------------------------------------------------------

# Upstream runner's environment variables -> config keys (applied last).
ENV_OVERRIDES = {
    "MODEL_PATH": "model_path",
    "STEPS": "steps",
    "ROLLOUT_BACKEND": "rollout.backend",
    "BATCH_SIZE": "rollout.batch_size",
    "NUM_PRE_Q": "rollout.num_pre_q",
    "GLOBAL_LENGTH": "rollout.global_length",
    "MAX_LENGTH_SAMPLE": "rollout.max_length_sample",
    "BETA": "train.beta",
    "MICRO_BATCH_SIZE": "train.micro_batch_size",
    "MESH_SHAPE": "mesh_shape",
    "EVAL_EVERY_STEPS": "eval.every_steps",
    "WANDB_MODE": "wandb.mode",
    "WANDB_PROJECT": "wandb.project",
    "WANDB_NAME": "wandb.name",
    "WANDB_ENTITY": "wandb.entity",
    "JAX_NUM_CPU_DEVICES": "num_cpu_devices",
    "SGLANG_JAX_MEM_FRACTION_STATIC": "rollout.sglang.mem_fraction_static",
    "SGLANG_JAX_MAX_TOTAL_TOKENS": "rollout.sglang.max_total_tokens",
    "SGLANG_JAX_CONTEXT_LENGTH": "rollout.sglang.context_length",
    "SGLANG_JAX_DTYPE": "rollout.sglang.dtype",
    "SGLANG_JAX_KV_CACHE_DTYPE": "rollout.sglang.kv_cache_dtype",
    "SGLANG_JAX_TP_SIZE": "rollout.sglang.tp_size",
    "SGLANG_JAX_PAGE_SIZE": "rollout.sglang.page_size",
    "SGLANG_JAX_MAX_RUNNING_REQUESTS": "rollout.sglang.max_running_requests",
    "SGLANG_JAX_CHUNKED_PREFILL_SIZE": "rollout.sglang.chunked_prefill_size",
    "SGLANG_JAX_PRECOMPILE": "rollout.sglang.precompile",
}


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            _fail(dotted, "a key inside a section", dotted)
    node[leaf] = value


def parse_set(assignment: str) -> tuple[str, Any]:
    if "=" not in assignment:
        _fail("--set", "key=value", assignment)
    key, text = assignment.split("=", 1)
    return key.strip(), yaml.safe_load(text) if text.strip() else ""


def _expand_vars(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _expand_vars(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_vars(v) for v in node]
    return os.path.expandvars(node) if isinstance(node, str) else node


def load_yaml_file(path: str) -> dict:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        _fail("--config", "an existing YAML file", path)
    if not isinstance(loaded, dict):
        _fail("--config", "a YAML mapping at the top level", path)
    return _expand_vars(loaded)


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    """Check one leaf against its annotation; ints pass as floats, nothing else is converted."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if not isinstance(value, bool):
            _fail(key, "true or false", value)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, "an integer", value)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, "a number", value)
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            _fail(key, "a string", value)
        return str(value)
    if origin is list:
        if not isinstance(value, list):
            _fail(key, "a list", value)
        (item_type,) = typing.get_args(annotation)
        return [_coerce(key, item_type, item) for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(key, "a mapping", value)
        _, item_type = typing.get_args(annotation)
        return {str(k): _coerce(f"{key}.{k}", item_type, v) for k, v in value.items()}
    raise TypeError(f"{key}: unsupported annotation {annotation}")


def build(cls: type, tree: Any, prefix: str = "") -> Any:
    """Instantiate a config dataclass from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(tree, dict):
        _fail(prefix.rstrip(".") or "config", "a mapping", tree)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in fields:
            where = f"under {prefix.rstrip('.')}" if prefix else "at the top level"
            _fail(f"{prefix}{key}", f"a known key {where} (one of {', '.join(sorted(fields))})", key)
    values = {}
    for key, value in tree.items():
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            values[key] = build(annotation, value, f"{prefix}{key}.")
        elif isinstance(annotation, types.UnionType):
            raise TypeError(f"{prefix}{key}: optional fields are not supported")
        else:
            values[key] = _coerce(f"{prefix}{key}", annotation, value)
    return cls(**values)


def env_overrides(environ: dict[str, str]) -> list[tuple[str, Any]]:
    return [(key, yaml.safe_load(environ[name]) if environ[name].strip() else "")
            for name, key in ENV_OVERRIDES.items() if name in environ]


def load_config(preset: str | None = None, config_file: str | None = None, sets: list[str] = (),
                environ: dict[str, str] | None = None) -> TrainerConfig:
    from trainer.presets import preset_overrides

    environ = dict(os.environ) if environ is None else environ
    tree = dataclasses.asdict(TrainerConfig())
    tree = deep_merge(tree, preset_overrides(preset or "cpu-tiny"))
    if config_file:
        tree = deep_merge(tree, load_yaml_file(config_file))
    for key, value in [parse_set(s) for s in sets] + env_overrides(environ):
        set_dotted(tree, key, value)
    return build(TrainerConfig, tree)


def to_yaml(config: TrainerConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, default_flow_style=False)

"""The trainer's configuration: its schema as pydantic models, and how a run's values are layered.

Precedence, lowest first: the built-in defaults (the cpu-tiny preset) -> a named preset -> a YAML file
-> repeated `--set a.b=value` (value parsed as YAML) -> the upstream environment variables
(MODEL_PATH, STEPS, NUM_PRE_Q, ...). The layers merge into one nested mapping, which the schema then
validates as a whole: unknown keys, wrong types (strictly: no text for a number, no 1 for true) and
values out of range are refused, and so are keys renamed since (`rollout.num_pre_q` names
`rollout.group_size`). Every mistake is one `ConfigError` line naming the key, what was expected and
the value received. A number field takes every spelling of a number a user writes (`1e-6`, `1E-6`,
`3e-5`, `.5`, `1_000`) by all three routes, and refuses nan and infinities. Choices are `Literal`
types, so the code that acts on one (trainer/losses.py, ...) matches every value the schema allows.
"""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from trainer.presets import PRESETS
from trainer.rewards import REWARD_NAMES, import_reward


class ConfigError(ValueError):
    """A configuration value that cannot run; the CLI turns it into exit code 2."""


def _rule(expected: str, holds: Callable[[Any], bool]) -> AfterValidator:
    """A check whose failure reads `key: expected <expected>, received <value>`."""

    def check(value):
        if not holds(value):
            raise PydanticCustomError("expected", expected)
        return value

    return AfterValidator(check)


# A number as users type it: PyYAML (YAML 1.1) leaves `1e-6`, `1E-6` and `3e-5` as text, because its
# floats need a dot and a signed exponent, so float fields also read the text of a number.
_NUMBER_TEXT = re.compile(r"[-+]?(?:\d+(?:_\d+)*(?:\.(?:\d+(?:_\d+)*)?)?|\.\d+(?:_\d+)*)(?:[eE][-+]?\d+)?")


def _number_from_text(value: Any) -> Any:
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        number = float(value.strip().replace("_", ""))
        if not math.isfinite(number):
            raise PydanticCustomError("expected", "a finite number")
        return number
    return value


def _text_from_number(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


Number = Annotated[float, BeforeValidator(_number_from_text)]  # ints and the text of a number too
Text = Annotated[str, BeforeValidator(_text_from_number)]  # a YAML number in a text field is its text
PositiveInt = Annotated[int, _rule("a positive integer", lambda v: v > 0)]
Count = Annotated[int, _rule("a non-negative number", lambda v: v >= 0)]
NonNegative = Annotated[Number, _rule("a non-negative number", lambda v: v >= 0)]
OpenUnit = Annotated[Number, _rule("a number in (0, 1)", lambda v: 0 < v < 1)]
HalfOpenUnit = Annotated[Number, _rule("a number in [0, 1)", lambda v: 0 <= v < 1)]

Dtype = Literal["auto", "float32", "bfloat16"]
Backend = Literal["jax", "sglang_jax"]
LossType = Literal["grpo", "dapo", "dr_grpo"]
KlEstimator = Literal["k2", "k3"]  # what each is, and why k1 is not offered: trainer.losses.kl_divergence
ScaleRewards = Literal["group", "batch", "none"]
CorrectnessMode = Literal["strict", "boxed", "flexible", "any"]


class Section(BaseModel):
    """A part of the config. Validating one, whether pydantic does it for the section above or Python code
    builds it, raises a ConfigError that names keys from the top (`rollout.sglang.page_size`)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    key: ClassVar[str] = ""  # where the section sits in the config; "" for the whole config

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except pydantic.ValidationError as error:
            raise _config_error(error, type(self)) from None


class ModelSection(Section):
    key: ClassVar[str] = "model"
    dtype: Dtype = "auto"  # compute dtype; auto: bfloat16 on TPU, float32 elsewhere
    param_dtype: Dtype = "float32"  # master weights and optimizer state; auto: float32 where it fits, else bfloat16
    remat: bool = False  # recompute layer activations in the backward pass
    layer_loop: Literal["auto", "scan", "unrolled"] = "auto"  # auto: unrolled on CPU, scan elsewhere (trainer/model/load.py)


class DataSection(Section):
    key: ClassVar[str] = "data"
    source: Literal["synthetic_arithmetic", "gsm8k"] = "synthetic_arithmetic"
    path: Text = ""  # local folder of {train,test}*.jsonl|parquet; empty: the hub's openai/gsm8k main
    system_prompt: Text = ""  # cpu-tiny: none, the prompt stays short for the tiny model
    shuffle: bool = True
    synthetic_max_operand: PositiveInt = 1
    synthetic_size: PositiveInt = 1000


class SglangSection(Section):
    """sglang-jax engine arguments; 0 / auto values are sized from the run before the engine starts."""

    key: ClassVar[str] = "rollout.sglang"
    mem_fraction_static: HalfOpenUnit = 0.0  # 0: auto (small, since the pool is capped by max_total_tokens)
    max_total_tokens: Count = 0  # KV pool tokens; 0: running requests (at most the rows) x (prompt bucket + new tokens)
    context_length: Count = 0  # 0: prompt bucket + new tokens
    dtype: Dtype = "auto"  # auto: model.dtype
    kv_cache_dtype: Literal["auto", "bf16", "float32"] = "auto"  # bf16 is sglang-jax's spelling
    tp_size: Count = 0  # 0: 1 on CPU, every local chip on TPU
    page_size: PositiveInt = 1
    max_running_requests: Count = 0  # 0: rows per process; with native attention (CPU) at most 4 (settings.py)
    chunked_prefill_size: Count = 0  # 0: rows per process x prompt bucket; with native attention one prompt bucket
    attention_backend: Literal["auto", "native", "fa"] = "auto"  # auto: native on CPU, fa on TPU
    precompile: bool = False  # compile the engine's padding buckets at start
    precompile_token_paddings: list[int] = Field(default_factory=list)
    precompile_bs_paddings: list[int] = Field(default_factory=list)
    disable_radix_cache: bool = True  # GRPO prompts repeat only within a group; false: flushed at every push
    overlap_schedule: bool = False  # races on CPU in 0.1.0rc0 (trainer/rollout/sglang_jax/settings.py)


class RolloutSection(Section):
    key: ClassVar[str] = "rollout"
    backend: Backend = "jax"
    batch_size: PositiveInt = 16  # prompts per step, over all processes
    group_size: PositiveInt = 8  # samples per prompt (the GRPO group; the upstream runner's num_pre_q)
    prompt_length: PositiveInt = 32  # prompt bucket: prompts are left-padded to this many tokens
    max_new_tokens: PositiveInt = 6  # new tokens per completion, the completion width
    prefill_buckets: list[int] = Field(default_factory=list)  # jax sampler; empty: [prompt_length]
    temperature: Annotated[Number, _rule("a positive number (greedy decoding is for evaluation)", lambda v: v > 0)] = 1.0
    top_k: Annotated[int, _rule("-1 (off) or a positive integer", lambda v: v == -1 or v > 0)] = -1
    top_p: Annotated[Number, _rule("a number in (0, 1]", lambda v: 0 < v <= 1)] = 1.0
    ignore_eos: bool = False  # stop tokens do not end a completion: exactly max_new_tokens new tokens
    # jax sampler's draw; auto: inverse_cdf on CPU, gumbel elsewhere (trainer/rollout/sampling.py)
    sampling_method: Literal["auto", "gumbel", "inverse_cdf"] = "auto"
    sglang: SglangSection = Field(default_factory=SglangSection)

    @model_validator(mode="after")
    def _buckets_fit_the_prompt(self):
        if any(not 0 < bucket <= self.prompt_length for bucket in self.prefill_buckets):
            raise ConfigError(f"rollout.prefill_buckets: expected sizes in (0, rollout.prompt_length="
                              f"{self.prompt_length}], received {self.prefill_buckets!r}")
        return self


class TrainSection(Section):
    key: ClassVar[str] = "train"
    loss_type: LossType = "dapo"  # grpo: per-sequence mean; dapo: token mean; dr_grpo: / (rows x max_new_tokens)
    beta: NonNegative = 0.0  # KL weight; > 0 keeps a frozen reference copy of the initial weights
    kl_estimator: Annotated[str, _rule("k2 or k3 (k1 was removed: as a loss its gradient is zero in expectation)",
                                       lambda v: v in typing.get_args(KlEstimator))] = "k3"
    epsilon_low: OpenUnit = 0.2
    epsilon_high: OpenUnit = 0.28
    num_iterations: PositiveInt = 1  # updates per rollout batch (mu); > 1 recomputes old log-probs first
    micro_batch_size: PositiveInt = 32  # rows per gradient-accumulation micro-batch, over all devices
    scale_rewards: ScaleRewards = "group"  # none: Dr. GRPO's mean-only advantages
    dynamic_sampling: bool = False  # drop (zero-weight) groups whose rewards are all equal
    mask_truncated_completions: bool = False
    importance_sampling_cap: NonNegative = 0.0  # > 0: truncated IS weight min(pi_old/pi_rollout, cap) per token


class OptimSection(Section):
    key: ClassVar[str] = "optim"
    name: Literal["adamw", "lion"] = "adamw"
    learning_rate: Annotated[Number, _rule("a positive number", lambda v: v > 0)] = 1e-2
    warmup_steps: Count = 2
    min_lr_ratio: Annotated[Number, _rule("a number in [0, 1]", lambda v: 0 <= v <= 1)] = 0.1  # cosine decays to this
    weight_decay: NonNegative = 0.0
    b1: HalfOpenUnit = 0.9
    b2: HalfOpenUnit = 0.99
    max_grad_norm: NonNegative = 1.0  # 0: no clipping


class RewardSection(Section):
    key: ClassVar[str] = "reward"
    # Built-in names, or `package.module:function` for a reward of your own (f(completion, gold) -> float).
    weights: dict[str, Number] = Field(
        default_factory=lambda: {"correctness": 1.0, "format": 0.0, "tag_count": 0.0})
    correctness_mode: CorrectnessMode = "any"  # precedence of `any`: trainer/rewards.py

    @model_validator(mode="after")
    def _rewards_exist(self):
        for name in self.weights:
            if name not in REWARD_NAMES and import_reward(name) is None:
                expected = "a built-in reward" + ("" if ":" in name else f" (one of {', '.join(REWARD_NAMES)})")
                raise ConfigError(f"reward.weights: expected {expected} or an importable module:function, "
                                  f"received {name!r}")
        if not any(self.weights.values()):
            raise ConfigError(f"reward.weights: expected at least one non-zero weight, received {self.weights!r}")
        return self


class EvalSection(Section):
    key: ClassVar[str] = "eval"
    every_steps: Count = 0  # 0: off; greedy pass@1 on the test split, one problem per rollout row
    batches: PositiveInt = 1
    split: Text = "test"


class CheckpointSection(Section):
    key: ClassVar[str] = "checkpoint"
    every_steps: Count = 0  # 0: only on SIGTERM
    dir: Text = ""  # empty: <out_dir>/checkpoints
    max_to_keep: PositiveInt = 2
    resume: bool = True  # restore the latest checkpoint in dir when one exists


class WandbSection(Section):
    key: ClassVar[str] = "wandb"
    mode: Literal["online", "offline", "disabled"] = "disabled"
    project: Text = "tpuctl-grpo"
    name: Text = ""
    entity: Text = ""


def parse_mesh_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise ConfigError(f"mesh_shape: expected three comma-separated integers dp,fsdp,tp, received {text!r}") from None
    if len(dims) != 3 or any(d == 0 or d < -1 for d in dims) or dims.count(-1) > 1:
        raise ConfigError(f"mesh_shape: expected dp,fsdp,tp with positive sizes and at most one -1, received {text!r}")
    return dims


def _mesh_shape(text: str) -> str:
    parse_mesh_shape(text)
    return text


class TrainerConfig(Section):
    model_path: Annotated[Text, _rule("a model folder or hub id (set MODEL_PATH or --set model_path=...)", bool)] = (
        "tiny-random")  # a Hugging Face folder or hub id; tiny-random builds the test model
    steps: PositiveInt = 40
    seed: int = 0
    out_dir: Text = "runs/cpu-tiny"
    mesh_shape: Annotated[Text, AfterValidator(_mesh_shape)] = "1,-1,1"  # dp,fsdp,tp; -1 takes the remaining devices
    distributed: bool = False  # call jax.distributed.initialize() bare (TPU pods); see trainer.runtime
    distributed_timeout_s: PositiveInt = 120
    num_cpu_devices: Count = 0  # > 0: that many CPU devices per process (JAX_NUM_CPU_DEVICES)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    train: TrainSection = Field(default_factory=TrainSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    wandb: WandbSection = Field(default_factory=WandbSection)

    @model_validator(mode="after")
    def _sections_agree(self):
        if self.rows % self.train.micro_batch_size:
            raise ConfigError(f"train.micro_batch_size: expected a divisor of rollout.batch_size x rollout.group_size "
                              f"= {self.rows}, received {self.train.micro_batch_size}")
        if self.data.source == "synthetic_arithmetic" and self.reward.correctness_mode == "boxed":
            raise ConfigError("reward.correctness_mode: expected not boxed with data.source synthetic_arithmetic, "
                              "received 'boxed'")
        return self

    @property
    def rows(self) -> int:
        """Sequences per step over all processes: prompts x group size."""
        return self.rollout.batch_size * self.rollout.group_size


# --- one line per mistake ------------------------------------------------------------------------

# Keys renamed for one name per concept; the upstream environment variables below still reach them.
RENAMED_KEYS = {
    "rollout.num_pre_q": "rollout.group_size",
    "rollout.global_length": "rollout.prompt_length",
    "rollout.max_length_sample": "rollout.max_new_tokens",
}
_EXPECTED_TYPE = {"int_type": "an integer", "bool_type": "true or false", "float_type": "a number",
                  "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
                  "model_type": "a mapping", "finite_number": "a finite number"}


def _config_error(error: pydantic.ValidationError, section: type[Section]) -> ConfigError:
    """The section's first mistake (an old key's before any other) as `key: expected X, received Y`. A
    section inside it has reported its own as a ConfigError already, which passes through."""
    errors = error.errors()
    renamed = [e for e in errors if e["type"] == "extra_forbidden" and _key(section, e["loc"]) in RENAMED_KEYS]
    first = (renamed or errors)[0]
    if first["type"] == "value_error" and isinstance(first["ctx"]["error"], ConfigError):
        return first["ctx"]["error"]
    key, received = _key(section, first["loc"]), first["input"]
    match first["type"]:
        case "literal_error":
            expected = "one of " + first["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        case "extra_forbidden" if key in RENAMED_KEYS:
            expected, received = f"its new name {RENAMED_KEYS[key]}", key
        case "extra_forbidden":
            where = f"under {section.key}" if section.key else "at the top level"
            expected, received = f"a known key {where} (one of {', '.join(sorted(section.model_fields))})", first["loc"][-1]
        case kind:
            expected = _EXPECTED_TYPE.get(kind, first["msg"])  # a _rule's message is its expectation
    return ConfigError(f"{key or 'config'}: expected {expected}, received {received!r}")


def _key(section: type[Section], loc: tuple) -> str:
    """The dotted key, from the top of the config, of a place inside the section."""
    return ".".join(([section.key] if section.key else []) + [str(part) for part in loc])


def build(cls: type[Section], tree: Any) -> Section:
    """A config model from a nested mapping, every mistake a ConfigError."""
    try:
        return cls.model_validate(tree)
    except pydantic.ValidationError as error:
        raise _config_error(error, cls) from None


# --- layering ------------------------------------------------------------------------------------

# Upstream runner's environment variables -> config keys (applied last).
ENV_OVERRIDES = {
    "MODEL_PATH": "model_path",
    "STEPS": "steps",
    "ROLLOUT_BACKEND": "rollout.backend",
    "BATCH_SIZE": "rollout.batch_size",
    "NUM_PRE_Q": "rollout.group_size",
    "GLOBAL_LENGTH": "rollout.prompt_length",
    "MAX_LENGTH_SAMPLE": "rollout.max_new_tokens",
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
            raise ConfigError(f"{dotted}: expected a key inside a section, received {dotted!r}")
    node[leaf] = value


def parse_set(assignment: str) -> tuple[str, Any]:
    if "=" not in assignment:
        raise ConfigError(f"--set: expected key=value, received {assignment!r}")
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
        raise ConfigError(f"--config: expected an existing YAML file, received {path!r}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config: expected a YAML mapping at the top level, received {path!r}")
    return _expand_vars(loaded)


def env_overrides(environ: dict[str, str]) -> list[tuple[str, Any]]:
    return [(key, yaml.safe_load(environ[name]) if environ[name].strip() else "")
            for name, key in ENV_OVERRIDES.items() if name in environ]


def load_config(preset: str | None = None, config_file: str | None = None, sets: list[str] = (),
                environ: dict[str, str] | None = None) -> TrainerConfig:
    environ = dict(os.environ) if environ is None else environ
    preset = preset or "cpu-tiny"
    if preset not in PRESETS:
        raise ConfigError(f"--preset: expected one of {', '.join(PRESETS)}, received {preset!r}")
    tree = deep_merge(TrainerConfig().model_dump(), PRESETS[preset])
    if config_file:
        tree = deep_merge(tree, load_yaml_file(config_file))
    for key, value in [parse_set(s) for s in sets] + env_overrides(environ):
        set_dotted(tree, key, value)
    return build(TrainerConfig, tree)


def to_yaml(config: TrainerConfig) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False, default_flow_style=False)

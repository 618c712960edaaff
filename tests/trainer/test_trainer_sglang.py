"""The sglang_jax backend with the real engine on CPU: generation with log-probs, weight pushes checked
against analytic values and against the trainer's own log-probs, sizing, and whole runs."""

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import psutil
import pytest

from tests.trainer.helpers import (
    run_pod,
    sigterm_at_step,
    start_sglang_engine,
    start_trainer,
    step_lines,
    wandb_history,
    wrapping_generate,
)
from trainer.config import ConfigError, load_config
from trainer.data import left_pad
from trainer.model.qwen2 import Qwen2Config
from trainer.model.weights import load_params
from trainer.rollout.sampling import SamplingSettings
from trainer.rollout.sglang_jax import SglangJaxBackend
from trainer.rollout.sglang_jax.patches_0_1_0rc0 import memory_check_indexes
from trainer.rollout.sglang_jax.settings import resolve_engine_section
from trainer.rollout.sglang_jax.weights import HeadLayout, engine_tensors, leaves_to_replace, match_heads
from trainer.runtime import Runtime, start
from trainer.testing import perf
from trainer.train_step import completion_logps

# float32 engine vs float32 trainer on the same weights: different kernels (paged attention, fused
# ops) reorder sums; observed differences are ~1e-6 on log-probs of about -6.
LOGPROB_TOLERANCE = 1e-4
FAVOURED, GAP = 123, 6.4


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    engine = start_sglang_engine(tiny_model_dir, tmp_path_factory.mktemp("run"), "rollout.batch_size=8",
                                 "rollout.group_size=8", "rollout.prompt_length=48", "rollout.max_new_tokens=8")
    yield engine
    engine[0].shutdown()


def _prompts(tokenizer, rows):
    questions = [f"What is {i % 5} + {i % 3}?" for i in range(rows)]
    ids, mask = left_pad([tokenizer.prompt_ids(q, "") for q in questions], 48, tokenizer.pad_id)
    return ids, mask


def _push_and_generate(engine, weights, rows: int, settings: SamplingSettings):
    """Push weights into the engine, then generate for `rows` prompts."""
    backend, _, _, tokenizer = engine
    backend.push_weights(weights)
    ids, mask = _prompts(tokenizer, rows)
    return backend.generate(ids, mask, settings, seed=0)


def _crafted(params, config: Qwen2Config, favoured: int = FAVOURED):
    """Layers that add nothing and embeddings along one direction: the favoured token's logit is
    GAP above every other token's, whatever the input."""
    h = config.hidden_size
    direction = np.zeros(h, np.float32)
    direction[0] = 1.0
    low, high = 1.0, 1.0 + GAP / math.sqrt(h)
    embed = np.tile(low * direction, (config.vocab_size, 1))
    embed[favoured] = high * direction
    crafted = jax.tree.map(np.asarray, params)
    crafted["embed_tokens"]["embedding"] = embed
    crafted["norm"]["scale"] = np.ones(h, np.float32)
    layer = crafted["layers"]["layer"]
    layer["o_proj"]["kernel"] = np.zeros_like(layer["o_proj"]["kernel"])
    layer["down_proj"]["kernel"] = np.zeros_like(layer["down_proj"]["kernel"])
    return jax.tree.map(jnp.asarray, crafted), (low, high)


def _analytic_logps(config: Qwen2Config, scale: float, other: float, favoured: float):
    """log p(favoured) and log p(any other) when the input embedding is `scale` x direction."""
    normed = scale / math.sqrt(scale * scale / config.hidden_size + config.rms_norm_eps)
    gap = normed * (favoured - other)
    log_norm = math.log(1 + (config.vocab_size - 1) * math.exp(-gap))
    return -log_norm, -gap - log_norm


def test_crafted_weights_make_one_token_the_argmax_with_the_analytic_logprob(engine):
    _, model, params, _ = engine
    crafted, (low, high) = _crafted(params, model.config)
    out = _push_and_generate(engine, crafted, 16, SamplingSettings(8, temperature=0.0))
    assert (out.completion_ids_NxC == FAVOURED).all() and out.completion_mask_NxC.all()
    first, _ = _analytic_logps(model.config, low, low, high)  # the input is the last prompt token
    later, _ = _analytic_logps(model.config, high, low, high)  # the input is the favoured token itself
    np.testing.assert_allclose(out.logps_NxC[:, 0], first, atol=LOGPROB_TOLERANCE)
    np.testing.assert_allclose(out.logps_NxC[:, 1:], later, atol=LOGPROB_TOLERANCE)
    assert first == pytest.approx(-math.log(1 + 511 * math.exp(-GAP)), abs=1e-3)  # -0.615 as in the notes


def test_sampling_after_a_crafted_push_follows_the_analytic_distribution(engine):
    _, model, params, _ = engine
    crafted, (low, high) = _crafted(params, model.config)
    out = _push_and_generate(engine, crafted, 64, SamplingSettings(8, temperature=1.0))
    valid = out.completion_mask_NxC.astype(bool)  # a stop token (p ~ 5e-4 per draw) may end a row early
    log_favoured, log_other = _analytic_logps(model.config, high, low, high)
    picked = (out.completion_ids_NxC == FAVOURED) & valid
    # ~512 draws of a Bernoulli(0.536): the standard error is 0.022.
    assert valid.sum() > 400 and abs(picked.sum() / valid.sum() - math.exp(log_favoured)) < 0.07
    # Whatever came before, every favoured draw has the favoured log-prob and every other draw the other
    # one (the RMS norm makes the input scale irrelevant up to eps).
    np.testing.assert_allclose(out.logps_NxC[picked], log_favoured, atol=LOGPROB_TOLERANCE)
    np.testing.assert_allclose(out.logps_NxC[valid & ~picked], log_other, atol=LOGPROB_TOLERANCE)


def test_stop_token_ends_the_completion_and_stays_in_the_mask(engine):
    _, model, params, tokenizer = engine
    stop = tokenizer.stop_ids[0]
    crafted, _ = _crafted(params, model.config, favoured=stop)
    out = _push_and_generate(engine, crafted, 4, SamplingSettings(8, temperature=0.0))
    assert (out.completion_ids_NxC[:, 0] == stop).all()
    np.testing.assert_array_equal(out.completion_mask_NxC, [[1] + [0] * 7] * 4)
    assert (out.completion_ids_NxC[:, 1:] == tokenizer.pad_id).all()


def test_ignore_eos_keeps_generating_after_the_stop_token(engine):
    _, model, params, tokenizer = engine
    stop = tokenizer.stop_ids[0]
    crafted, _ = _crafted(params, model.config, favoured=stop)
    out = _push_and_generate(engine, crafted, 4, SamplingSettings(8, temperature=0.0, ignore_eos=True))
    assert (out.completion_ids_NxC == stop).all() and out.completion_mask_NxC.all()


def test_engine_logprobs_match_the_trainer_after_a_normal_push(engine):
    backend, model, params, tokenizer = engine
    nudged = jax.tree.map(lambda x: x * 1.05, params)  # weights the engine has never loaded
    backend.push_weights(nudged)
    ids, mask = _prompts(tokenizer, 16)
    out = backend.generate(ids, mask, SamplingSettings(8, temperature=0.8), seed=0)
    trainer_logps, _ = completion_logps(model, nudged, jnp.asarray(ids), jnp.asarray(mask),
                                        jnp.asarray(out.completion_ids_NxC), 0.8)
    valid = out.completion_mask_NxC.astype(bool)
    diff = np.abs(np.asarray(trainer_logps)[valid] - out.logps_NxC[valid])
    print(f"engine vs trainer log-prob: max |diff| {diff.max():.2e} over {valid.sum()} tokens")
    assert valid.sum() > 64 and diff.max() < LOGPROB_TOLERANCE
    original, _ = completion_logps(model, params, jnp.asarray(ids), jnp.asarray(mask),
                                   jnp.asarray(out.completion_ids_NxC), 0.8)
    assert np.abs(np.asarray(original)[valid] - out.logps_NxC[valid]).max() > 100 * LOGPROB_TOLERANCE


def test_an_idle_engine_does_not_spin_a_core(engine):
    backend, _, params, tokenizer = engine
    backend.push_weights(params)
    ids, mask = _prompts(tokenizer, 4)
    backend.generate(ids, mask, SamplingSettings(4, temperature=1.0), seed=0)
    process = psutil.Process()
    before = process.cpu_times()
    time.sleep(2.0)
    after = process.cpu_times()
    busy = (after.user - before.user) + (after.system - before.system)
    assert busy < 0.5, f"{busy:.2f} CPU seconds in 2 s of idling"  # a polling loop would use ~2.0


def test_a_push_does_not_recompile_the_engine(engine):
    backend, model, params, tokenizer = engine
    ids, mask = _prompts(tokenizer, 16)
    settings = SamplingSettings(8, temperature=1.0)
    backend.push_weights(params)
    backend.generate(ids, mask, settings, seed=0)
    backend.generate(ids, mask, settings, seed=1)
    # The new weights are computed first: the eager multiplies compile too, unless an earlier test left
    # them in JAX's cache, and they are not the engine's.
    nudged = jax.block_until_ready(jax.tree.map(lambda x: x * 0.99, params))
    before = perf.compile_count()
    backend.push_weights(nudged)
    backend.generate(ids, mask, settings, seed=2)
    assert perf.compile_count() == before
    assert backend.timings()["time/engine_weight_push_s"] > 0


# --- sizing ------------------------------------------------------------------------------------------

CPU = Runtime(mesh=None, platform="cpu", process_index=0, process_count=1)


def _tiny_config(tiny_model_dir, *sets):
    return load_config(None, sets=[f"model_path={tiny_model_dir}", "rollout.backend=sglang_jax", *sets], environ={})


def test_engine_sizes_come_from_the_run(tiny_model_dir):
    config = _tiny_config(tiny_model_dir, "rollout.batch_size=2", "rollout.group_size=4", "train.micro_batch_size=8",
                          "rollout.prompt_length=100", "rollout.max_new_tokens=28", "model.dtype=float32")
    engine = resolve_engine_section(config, Qwen2Config.from_dir(tiny_model_dir), CPU)
    # The CPU's native attention: 4 running requests in a pool sized for them, one prompt per prefill chunk.
    assert (engine.context_length, engine.max_running_requests, engine.max_total_tokens) == (129, 4, 4 * 130)
    assert (engine.dtype, engine.kv_cache_dtype, engine.tp_size, engine.attention_backend) == (
        "float32", "float32", 1, "native")
    assert engine.precompile_bs_paddings == [2, 4] and engine.chunked_prefill_size == 100


def test_engine_sizes_follow_the_rows_with_the_fa_backend(tiny_model_dir):
    config = _tiny_config(tiny_model_dir, "rollout.batch_size=2", "rollout.group_size=4", "train.micro_batch_size=8",
                          "rollout.prompt_length=100", "rollout.max_new_tokens=28", "model.dtype=float32",
                          "rollout.sglang.attention_backend=fa")
    engine = resolve_engine_section(config, Qwen2Config.from_dir(tiny_model_dir), CPU)
    assert (engine.max_running_requests, engine.max_total_tokens, engine.chunked_prefill_size) == (8, 8 * 130, 800)
    assert engine.precompile_bs_paddings == [2, 4, 8]


@pytest.mark.parametrize("assignment, message", [
    ("rollout.sglang.max_total_tokens=30", "rollout.sglang.max_total_tokens: expected at least one request's "
                                           "context of 39 tokens, received 30"),
    ("rollout.sglang.context_length=20", "rollout.sglang.context_length: expected at least"),
    ("rollout.sglang.max_running_requests=1", "rollout.sglang.max_running_requests: expected at least 2"),
    ("rollout.sglang.max_total_tokens=4000000000", "rollout.sglang.max_total_tokens: expected a KV pool that fits"),
])
def test_impossible_engine_sizes_fail_before_the_engine_starts(tiny_model_dir, assignment, message):
    config = _tiny_config(tiny_model_dir, assignment, "model.dtype=float32")
    with pytest.raises(ConfigError) as error:
        resolve_engine_section(config, Qwen2Config.from_dir(tiny_model_dir), CPU)
    assert str(error.value).startswith(message)


def test_an_engine_smaller_than_its_host_is_refused_on_a_pod(tiny_model_dir):
    """On a pod the push lays the weights out over all of a host's devices, so the engine must use them all."""
    config = _tiny_config(tiny_model_dir, "rollout.sglang.tp_size=2", "model.dtype=float32")
    second_host_of_two = dataclasses.replace(CPU, process_index=1, process_count=2)
    with pytest.raises(ConfigError) as error:
        resolve_engine_section(config, Qwen2Config.from_dir(tiny_model_dir), second_host_of_two)
    assert str(error.value) == (f"rollout.sglang.tp_size: expected each host's device count "
                                f"{jax.local_device_count()} (or 0 for it) on a pod, received 2")


def test_the_workarounds_refuse_a_version_they_were_not_written_for(monkeypatch):
    from trainer.rollout.sglang_jax import patches_0_1_0rc0 as patches

    patches.check_version()  # the pinned one
    monkeypatch.setattr(patches.importlib.metadata, "version", lambda name: "0.1.1")
    with pytest.raises(RuntimeError, match=r"^sglang-jax 0\.1\.1 is installed; .*patches_0_1_0rc0\.py works around "
                                           r"0\.1\.0rc0: check each workaround against 0\.1\.1"):
        patches.check_version()


@pytest.mark.parametrize("host, mesh_indexes, expected", [
    (0, [0, 1, 2, 3], [0, 1, 2, 3]),  # a v4-16's first host: ids 0-3, as the job counts them
    (1, [4, 5, 6, 7], [0, 1, 2, 3]),  # its second host: ids 4-7, counted from 4 by the memory check
])
def test_the_engine_memory_check_counts_devices_from_its_own_host(host, mesh_indexes, expected):
    assert memory_check_indexes(mesh_indexes, job_offset=0, host_offset=4 * host) == expected
    assert memory_check_indexes(None, job_offset=0, host_offset=4 * host) is None


def test_environment_knobs_reach_the_engine(tiny_model_dir):
    config = load_config(None, sets=[f"model_path={tiny_model_dir}", "rollout.backend=sglang_jax"],
                         environ={"SGLANG_JAX_MAX_TOTAL_TOKENS": "3000", "SGLANG_JAX_CONTEXT_LENGTH": "64",
                                  "SGLANG_JAX_MEM_FRACTION_STATIC": "0.2", "SGLANG_JAX_DTYPE": "bfloat16"})
    engine = resolve_engine_section(config, Qwen2Config.from_dir(tiny_model_dir), CPU)
    assert (engine.max_total_tokens, engine.context_length, engine.mem_fraction_static) == (3000, 64, 0.2)
    assert (engine.dtype, engine.kv_cache_dtype) == ("bfloat16", "bf16")


# --- layout mapping ----------------------------------------------------------------------------------


def test_match_heads_pads_head_dim_and_repeats_kv_heads():
    ours, engine = HeadLayout(heads=2, kv_heads=1, head_dim=2), HeadLayout(heads=2, kv_heads=2, head_dim=4)
    kernel = jnp.arange(6.0).reshape(3, 2)  # [in=3, kv_heads x head_dim = 1 x 2]
    expected = np.array([[0, 1, 0, 0, 0, 1, 0, 0], [2, 3, 0, 0, 2, 3, 0, 0], [4, 5, 0, 0, 4, 5, 0, 0]])
    np.testing.assert_array_equal(match_heads(kernel, -1, ours, engine, "kv"), expected)
    o_proj = jnp.arange(8.0).reshape(4, 2)  # [q_heads x head_dim = 2 x 2, hidden 2]
    padded = match_heads(o_proj, 0, ours, engine, "q")
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [0, 0], [0, 0], [4, 5], [6, 7], [0, 0], [0, 0]])
    assert match_heads(kernel, -1, ours, ours, "kv") is kernel


def test_every_engine_tensor_finds_its_leaf_in_a_state_laid_out_like_the_engines(untied_sharded_model_dir):
    """The mapping without an engine: a state tree with the engine's paths, each tensor an nnx Param's
    `value`, beside a leaf the push must leave alone."""
    config = Qwen2Config.from_dir(untied_sharded_model_dir)
    layout = HeadLayout(config.num_attention_heads, config.num_key_value_heads, config.head_dim)
    tensors = engine_tensors(load_params(untied_sharded_model_dir, config, np.float32), config, layout, layout)
    assert len(tensors) == 3 + 12 * config.num_hidden_layers and "lm_head/embedding" in tensors
    state = {"model": {"rotary_emb": {"cos_sin_cache": {"value": np.zeros(4)}}}}
    for path, value in tensors.items():
        node = state
        for part in path.split("/"):
            node = node.setdefault(part, {})
        node["value"] = value
    leaves = jax.tree.leaves(state)
    targets = leaves_to_replace(state, tensors)
    assert sorted(path for _, path in targets) == sorted(tensors)
    assert all(leaves[index] is tensors[path] for index, path in targets)
    with pytest.raises(RuntimeError, match=f"weight push: {len(tensors)} of {len(tensors) + 1} tensors found"):
        leaves_to_replace(state, tensors | {"model/layers/0/mlp/missing/weight": np.zeros(1)})


# --- whole runs ----------------------------------------------------------------------------------------


def test_an_exception_in_the_loop_still_shuts_the_engine_down(tmp_path, tiny_model_dir):
    from trainer.loop import train

    config = _tiny_config(tiny_model_dir, "steps=3", f"out_dir={tmp_path / 'run'}", "rollout.batch_size=2",
                          "rollout.group_size=4", "train.micro_batch_size=8")
    backends = []

    def failing_on_call_2(generate):
        calls = []

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("rollout failed")
            return generate(*args, **kwargs)

        backends.append(generate.__self__)
        return failing

    with pytest.raises(RuntimeError, match="rollout failed"):
        train(config, start(config), wrapping_generate(failing_on_call_2), out=lambda line: None)
    assert isinstance(backends[0], SglangJaxBackend) and backends[0].engine is None


def test_three_grpo_steps_through_sglang_jax_and_no_process_left(tmp_path, tiny_model_dir):
    args = ["--set", f"model_path={tiny_model_dir}", "--set", "rollout.backend=sglang_jax", "--set", "steps=3",
            "--set", f"out_dir={tmp_path / 'run'}"]
    child = start_trainer(args, cwd=tmp_path, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-dir"))
    lines, children_during_run = [], None
    for line in child.stdout:
        lines.append(line)
        if line.startswith("step=1 "):
            children_during_run = psutil.Process(child.pid).children(recursive=True)
            commands = [" ".join(p.cmdline()) for p in children_during_run]
    _, stderr = child.communicate(timeout=600)
    stdout = "".join(lines)
    assert child.returncode == 0, stderr[-3000:]
    assert "\nrollout:\n  backend: sglang_jax\n" in stdout
    assert "    max_total_tokens: 160\n" in stdout  # 4 running requests x (32 + 6 + 1 context + 1 page)
    assert "    attention_backend: native\n" in stdout  # "auto" resolved for the CPU
    assert [m.group(1) for m in step_lines(stdout)] == ["0", "1", "2"]
    # Single-process mode: the scheduler and detokenizer are threads. The only child is W&B's service,
    # and nothing the run started outlives it.
    assert not [c for c in commands if "multiprocessing" in c or "sgl" in c], commands
    assert not [p for p in children_during_run if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert "Traceback" not in stderr
    rows, exit_code = wandb_history(tmp_path / "wandb-dir")
    assert exit_code == 0 and len(rows) == 3
    for row in rows:
        assert row["rollout/logprob_mismatch_mean"] < LOGPROB_TOLERANCE
        assert row["time/engine_weight_push_s"] > 0 and row["time/weight_push_s"] > 0


def test_sigterm_with_the_engine_running_saves_and_exits(tmp_path, tiny_model_dir):
    args = ["--set", f"model_path={tiny_model_dir}", "--set", "rollout.backend=sglang_jax", "--set", "steps=1000",
            "--set", f"out_dir={tmp_path / 'run'}"]
    child = start_trainer(args, cwd=tmp_path)
    stdout, stderr = sigterm_at_step(child, 1)
    assert child.returncode == 143, stderr[-3000:]
    assert "SIGTERM: saved checkpoint" in stdout
    assert not psutil.pid_exists(child.pid) or psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE


def test_a_two_host_pod_runs_one_engine_per_host_and_pushes_the_sharded_weights(tmp_path, tiny_model_dir):
    """Each host's engine runs on its own 2 devices (tensor parallel) for its own rows, while the trainer's
    params are sharded over both hosts (fsdp over 2 x 2 CPU devices): every push must hand each engine
    the whole updated model in its layout, which the engine's log-probs of its own samples then match."""
    args = ["--set", f"model_path={tiny_model_dir}", "--set", "rollout.backend=sglang_jax", "--set", "steps=3",
            "--set", f"out_dir={tmp_path / 'run'}", "--set", "distributed_timeout_s=60"]
    outputs = run_pod(args, cwd=tmp_path, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-dir"))
    for code, _, stderr in outputs:
        assert code == 0, stderr[-3000:]
    assert "    tp_size: 2\n" in outputs[0][1]  # each engine holds its weights split over its host's 2 devices
    pod = [[m.groups()[:4] for m in step_lines(stdout)] for _, stdout, _ in outputs]
    assert pod[0] == pod[1] and [step for step, *_ in pod[0]] == ["0", "1", "2"]
    rows, exit_code = wandb_history(tmp_path / "wandb-dir")  # written by the main process
    assert exit_code == 0 and len(rows) == 3
    for row in rows:  # steps 1 and 2 sample from pushed weights, after updates at learning rate 1e-2
        assert row["rollout/logprob_mismatch_mean"] < LOGPROB_TOLERANCE


def test_the_hosts_of_a_pod_draw_different_completions_of_one_prompt(tmp_path, tiny_model_dir):
    """The smoke preset's shape on a 2-host pod: one prompt, a group of 4, rows 0-1 on host 0 and rows 2-3 on
    host 1. Engines seeded alike would draw the same two completions on both hosts and halve the group."""
    out_dir = tmp_path / "run"
    args = ["--set", f"model_path={tiny_model_dir}", "--set", "rollout.backend=sglang_jax", "--set", "steps=2",
            "--set", "rollout.batch_size=1", "--set", "rollout.group_size=4", "--set", "train.micro_batch_size=4",
            "--set", f"out_dir={out_dir}", "--set", "distributed_timeout_s=60"]
    outputs = run_pod(args, cwd=tmp_path, program=(str(Path(__file__).parent / "pod_rollouts.py"),))
    for code, _, stderr in outputs:
        assert code == 0, stderr[-3000:]
    host0, host1 = (json.loads((out_dir / f"rollouts-{i}.json").read_text()) for i in (0, 1))
    assert len(host0) == len(host1) == 2
    for step in range(2):
        rows = host0[step] + host1[step]
        assert len(rows) == 4 and all(rows)
        assert len({tuple(row) for row in rows}) == 4, rows  # four different completions of the one prompt

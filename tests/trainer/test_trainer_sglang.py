"""The sglang_jax backend with the real engine on CPU: generation with log-probs, weight pushes checked
against analytic values and against the trainer's own log-probs, sizing, and whole runs."""

import dataclasses
import math
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import psutil
import pytest
from trainer_testlib import run_pod, step_lines, subprocess_env, wandb_history

from trainer.config import ConfigError, load_config
from trainer.data import left_pad
from trainer.loop import resolve_auto_values
from trainer.model.load import build_model
from trainer.model.qwen2 import Qwen2Config
from trainer.model.tokenizer import ChatTokenizer
from trainer.rollout.sglang_jax import (
    HeadLayout,
    SglangJaxBackend,
    match_heads,
    memory_check_indexes,
    resolve_engine_section,
)
from trainer.runtime import Runtime, start
from trainer.sampling import SamplingSettings
from trainer.testing import perf
from trainer.train_step import completion_logps

# float32 engine vs float32 trainer on the same weights: different kernels (paged attention, fused
# ops) reorder sums; observed differences are ~1e-6 on log-probs of about -6.
LOGPROB_TOLERANCE = 1e-4
FAVOURED, GAP = 123, 6.4


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    config = load_config(None, sets=[f"model_path={tiny_model_dir}", "rollout.backend=sglang_jax",
                                     "rollout.batch_size=8", "rollout.num_pre_q=8", "rollout.global_length=48",
                                     "rollout.max_length_sample=8", f"out_dir={tmp_path_factory.mktemp('run')}"],
                         environ={})
    runtime = start(config)
    config = resolve_auto_values(config, runtime, tiny_model_dir)
    tokenizer = ChatTokenizer(tiny_model_dir)
    model, host_params = build_model(tiny_model_dir, config.model, runtime.platform)
    backend = SglangJaxBackend(config, model.config, runtime, tokenizer, tiny_model_dir)
    yield backend, model, jax.tree.map(jnp.asarray, host_params), tokenizer
    backend.shutdown()


def _prompts(tokenizer, rows):
    questions = [f"What is {i % 5} + {i % 3}?" for i in range(rows)]
    ids, mask = left_pad([tokenizer.prompt_ids(q, "") for q in questions], 48, tokenizer.pad_id)
    return ids, mask


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
    backend, model, params, tokenizer = engine
    crafted, (low, high) = _crafted(params, model.config)
    backend.push_weights(crafted)
    ids, mask = _prompts(tokenizer, 16)
    out = backend.generate(ids, mask, SamplingSettings(8, temperature=0.0), seed=0)
    assert (out.completion_ids_NxC == FAVOURED).all() and out.completion_mask_NxC.all()
    first, _ = _analytic_logps(model.config, low, low, high)  # the input is the last prompt token
    later, _ = _analytic_logps(model.config, high, low, high)  # the input is the favoured token itself
    np.testing.assert_allclose(out.logprobs_NxC[:, 0], first, atol=LOGPROB_TOLERANCE)
    np.testing.assert_allclose(out.logprobs_NxC[:, 1:], later, atol=LOGPROB_TOLERANCE)
    assert first == pytest.approx(-math.log(1 + 511 * math.exp(-GAP)), abs=1e-3)  # -0.615 as in the notes


def test_sampling_after_a_crafted_push_follows_the_analytic_distribution(engine):
    backend, model, params, tokenizer = engine
    crafted, (low, high) = _crafted(params, model.config)
    backend.push_weights(crafted)
    ids, mask = _prompts(tokenizer, 64)
    out = backend.generate(ids, mask, SamplingSettings(8, temperature=1.0), seed=0)
    valid = out.completion_mask_NxC.astype(bool)  # a stop token (p ~ 5e-4 per draw) may end a row early
    log_favoured, log_other = _analytic_logps(model.config, high, low, high)
    picked = (out.completion_ids_NxC == FAVOURED) & valid
    # ~512 draws of a Bernoulli(0.536): the standard error is 0.022.
    assert valid.sum() > 400 and abs(picked.sum() / valid.sum() - math.exp(log_favoured)) < 0.07
    # Whatever came before, every favoured draw has the favoured log-prob and every other draw the other
    # one (the RMS norm makes the input scale irrelevant up to eps).
    np.testing.assert_allclose(out.logprobs_NxC[picked], log_favoured, atol=LOGPROB_TOLERANCE)
    np.testing.assert_allclose(out.logprobs_NxC[valid & ~picked], log_other, atol=LOGPROB_TOLERANCE)


def test_stop_token_ends_the_completion_and_stays_in_the_mask(engine):
    backend, model, params, tokenizer = engine
    stop = tokenizer.stop_ids[0]
    crafted, _ = _crafted(params, model.config, favoured=stop)
    backend.push_weights(crafted)
    ids, mask = _prompts(tokenizer, 4)
    out = backend.generate(ids, mask, SamplingSettings(8, temperature=0.0), seed=0)
    assert (out.completion_ids_NxC[:, 0] == stop).all()
    np.testing.assert_array_equal(out.completion_mask_NxC, [[1] + [0] * 7] * 4)
    assert (out.completion_ids_NxC[:, 1:] == tokenizer.pad_id).all()


def test_ignore_eos_keeps_generating_after_the_stop_token(engine):
    backend, model, params, tokenizer = engine
    stop = tokenizer.stop_ids[0]
    crafted, _ = _crafted(params, model.config, favoured=stop)
    backend.push_weights(crafted)
    ids, mask = _prompts(tokenizer, 4)
    out = backend.generate(ids, mask, SamplingSettings(8, temperature=0.0, ignore_eos=True), seed=0)
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
    diff = np.abs(np.asarray(trainer_logps)[valid] - out.logprobs_NxC[valid])
    print(f"engine vs trainer log-prob: max |diff| {diff.max():.2e} over {valid.sum()} tokens")
    assert valid.sum() > 64 and diff.max() < LOGPROB_TOLERANCE
    original, _ = completion_logps(model, params, jnp.asarray(ids), jnp.asarray(mask),
                                   jnp.asarray(out.completion_ids_NxC), 0.8)
    assert np.abs(np.asarray(original)[valid] - out.logprobs_NxC[valid]).max() > 100 * LOGPROB_TOLERANCE


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
    before = perf.compile_count()
    backend.push_weights(jax.tree.map(lambda x: x * 0.99, params))
    backend.generate(ids, mask, settings, seed=2)
    assert perf.compile_count() == before
    assert backend.timings()["time/engine_weight_push_s"] > 0


# --- sizing ------------------------------------------------------------------------------------------

CPU = Runtime(mesh=None, platform="cpu", process_index=0, process_count=1)


def _tiny_config(tiny_model_dir, *sets):
    return load_config(None, sets=[f"model_path={tiny_model_dir}", "rollout.backend=sglang_jax", *sets], environ={})


def test_engine_sizes_come_from_the_run(tiny_model_dir):
    config = _tiny_config(tiny_model_dir, "rollout.batch_size=2", "rollout.num_pre_q=4", "train.micro_batch_size=8",
                          "rollout.global_length=100", "rollout.max_length_sample=28")
    engine = resolve_engine_section(dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                                          dtype="float32")),
                                    Qwen2Config.from_dir(tiny_model_dir), CPU)
    assert (engine.context_length, engine.max_running_requests, engine.max_total_tokens) == (129, 8, 8 * 130)
    assert (engine.dtype, engine.kv_cache_dtype, engine.tp_size, engine.attention_backend) == (
        "float32", "float32", 1, "native")
    assert engine.precompile_bs_paddings == [2, 4, 8] and engine.chunked_prefill_size == 800


@pytest.mark.parametrize("assignment, message", [
    ("rollout.sglang.max_total_tokens=30", "rollout.sglang.max_total_tokens: expected at least one request's "
                                           "context of 39 tokens, received 30"),
    ("rollout.sglang.context_length=20", "rollout.sglang.context_length: expected at least"),
    ("rollout.sglang.max_running_requests=1", "rollout.sglang.max_running_requests: expected at least 2"),
    ("rollout.sglang.max_total_tokens=4000000000", "rollout.sglang.max_total_tokens: expected a KV pool that fits"),
])
def test_impossible_engine_sizes_fail_before_the_engine_starts(tiny_model_dir, assignment, message):
    config = _tiny_config(tiny_model_dir, assignment)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="float32"))
    with pytest.raises(ConfigError) as error:
        resolve_engine_section(config, Qwen2Config.from_dir(tiny_model_dir), CPU)
    assert str(error.value).startswith(message)


def test_an_engine_smaller_than_its_host_is_refused_on_a_pod(tiny_model_dir):
    """On a pod the push lays the weights out over all of a host's devices, so the engine must use them all."""
    config = _tiny_config(tiny_model_dir, "rollout.sglang.tp_size=2")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="float32"))
    second_host_of_two = dataclasses.replace(CPU, process_index=1, process_count=2)
    with pytest.raises(ConfigError) as error:
        resolve_engine_section(config, Qwen2Config.from_dir(tiny_model_dir), second_host_of_two)
    assert str(error.value) == (f"rollout.sglang.tp_size: expected each host's device count "
                                f"{jax.local_device_count()} (or 0 for it) on a pod, received 2")


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


# --- whole runs ----------------------------------------------------------------------------------------


def test_an_exception_in_the_loop_still_shuts_the_engine_down(tmp_path, tiny_model_dir):
    from trainer.loop import train
    from trainer.rollout import make_backend

    config = _tiny_config(tiny_model_dir, "steps=3", f"out_dir={tmp_path / 'run'}", "rollout.batch_size=2",
                          "rollout.num_pre_q=4", "train.micro_batch_size=8")
    backends = []

    def failing_on_step_1(*args):
        backend = make_backend(*args)
        real_generate, calls = backend.generate, []

        def generate(*generate_args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("rollout failed")
            return real_generate(*generate_args, **kwargs)

        backend.generate = generate
        backends.append(backend)
        return backend

    with pytest.raises(RuntimeError, match="rollout failed"):
        train(config, start(config), failing_on_step_1, out=lambda line: None)
    assert isinstance(backends[0], SglangJaxBackend) and backends[0].engine is None


def test_three_grpo_steps_through_sglang_jax_and_no_process_left(tmp_path, tiny_model_dir):
    args = ["--set", f"model_path={tiny_model_dir}", "--set", "rollout.backend=sglang_jax", "--set", "steps=3",
            "--set", f"out_dir={tmp_path / 'run'}"]
    env = subprocess_env(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-dir"))
    child = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    assert "    max_total_tokens: 5120\n" in stdout  # 128 rows x (32 + 6 + 1 context + 1 page)
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
    child = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=tmp_path, env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in child.stdout:
        if line.startswith("step=1 "):
            child.send_signal(signal.SIGTERM)
            break
    rest, stderr = child.communicate(timeout=300)
    assert child.returncode == 143, stderr[-3000:]
    assert "SIGTERM: saved checkpoint" in rest
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

"""Config precedence, validation messages, presets, --print-config and exit codes."""

import os
import subprocess
import sys

import pytest
import yaml
from trainer_testlib import run_trainer

from trainer.config import ConfigError, TrainerConfig, build, load_config, to_yaml
from trainer.presets import PRESETS


def test_precedence_defaults_preset_yaml_set_env(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("steps: 5\nrollout:\n  num_pre_q: 2\n  global_length: 64\n")
    config = load_config("smoke", str(config_file), ["rollout.num_pre_q=4", "steps=7"],
                         environ={"STEPS": "9", "MODEL_PATH": "/models/qwen"})
    assert config.rollout.backend == "sglang_jax"  # from the preset
    assert config.rollout.global_length == 64  # the file beat the preset's 512
    assert config.rollout.num_pre_q == 4  # --set beat the file
    assert config.steps == 9  # the environment beat --set
    assert config.model_path == "/models/qwen"
    assert config.train.micro_batch_size == 4  # untouched preset value


def test_yaml_file_expands_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_DATA", "/data/gsm8k")
    config_file = tmp_path / "run.yaml"
    config_file.write_text("data:\n  path: $MY_DATA/main\n")
    assert load_config(None, str(config_file), environ={}).data.path == "/data/gsm8k/main"


def test_upstream_environment_names_map_to_keys():
    environ = {"ROLLOUT_BACKEND": "sglang_jax", "BATCH_SIZE": "2", "NUM_PRE_Q": "4", "MAX_LENGTH_SAMPLE": "16",
               "BETA": "0.04", "WANDB_PROJECT": "p", "WANDB_NAME": "n", "SGLANG_JAX_MAX_TOTAL_TOKENS": "4096",
               "SGLANG_JAX_MEM_FRACTION_STATIC": "0.1", "SGLANG_JAX_DTYPE": "bfloat16",
               "SGLANG_JAX_CONTEXT_LENGTH": "512", "TRAIN_UNRELATED": "x"}
    config = load_config(None, sets=["train.micro_batch_size=8"], environ=environ)
    assert (config.rollout.backend, config.rollout.batch_size, config.rollout.num_pre_q) == ("sglang_jax", 2, 4)
    assert config.rollout.max_length_sample == 16 and config.train.beta == 0.04
    assert (config.wandb.project, config.wandb.name) == ("p", "n")
    sglang = config.rollout.sglang
    assert (sglang.max_total_tokens, sglang.mem_fraction_static, sglang.dtype, sglang.context_length) == (
        4096, 0.1, "bfloat16", 512)


@pytest.mark.parametrize("assignment, message", [
    ("rollout.batch_size=-3", "rollout.batch_size: expected a positive integer, received -3"),
    ("rollout.bach_size=3", "rollout.bach_size: expected a known key under rollout"),
    ("steps=many", "steps: expected an integer, received 'many'"),
    ("train.beta=yes", "train.beta: expected a number, received True"),
    ("train.loss_type=ppo", "train.loss_type: expected one of grpo, dapo, dr_grpo, received 'ppo'"),
    ("train.micro_batch_size=7", "train.micro_batch_size: expected a divisor of rollout.batch_size x "
                                 "rollout.num_pre_q = 128, received 7"),
    ("reward.weights.speed=1.0", "reward.weights: expected a built-in reward (one of correctness, format, "
                                 "tag_count) or an importable module:function, received 'speed'"),
    ("reward.weights={'trainer.rewards:no_such_reward': 1.0}",
     "reward.weights: expected a built-in reward or an importable module:function, "
     "received 'trainer.rewards:no_such_reward'"),
    ("reward.weights={'no_such_module_xyz:f': 1.0}",
     "reward.weights: expected a built-in reward or an importable module:function, received 'no_such_module_xyz:f'"),
    ("reward.weights={'trainer.rewards:_TAGS': 1.0}",
     "reward.weights: expected a built-in reward or an importable module:function, received 'trainer.rewards:_TAGS'"),
    ("mesh_shape=2,2", "mesh_shape: expected dp,fsdp,tp"),
    ("rollout.sglang.mem_fraction_static=1.5", "rollout.sglang.mem_fraction_static: expected a number in [0, 1)"),
    ("rollout.temperature=0", "rollout.temperature: expected a positive number"),
])
def test_bad_values_name_key_value_and_expectation(assignment, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, sets=[assignment], environ={})
    assert str(error.value).startswith(message)


def test_every_preset_is_valid_and_smoke_matches_the_sop():
    for name in PRESETS:
        load_config(name, environ={})
    smoke = load_config("smoke", environ={})
    assert smoke.steps == 1 and smoke.rollout.backend == "sglang_jax"
    assert (smoke.rollout.batch_size, smoke.rollout.num_pre_q) == (1, 4)
    assert (smoke.rollout.global_length, smoke.rollout.max_length_sample, smoke.train.beta) == (512, 64, 0.0)


def test_defaults_are_the_cpu_tiny_preset():
    assert load_config("cpu-tiny", environ={}) == load_config(None, environ={}) == TrainerConfig()


def test_yaml_dump_is_nested_and_loads_back():
    text = to_yaml(TrainerConfig())
    assert "\nrollout:\n  backend: jax\n" in text
    assert build(TrainerConfig, yaml.safe_load(text)) == TrainerConfig()


def test_print_config_exits_zero_and_shows_backend(tmp_path):
    result = run_trainer(["--preset", "smoke", "--print-config", "--set", "model_path=/m"], cwd=tmp_path,
                         timeout=120)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["rollout"]["backend"] == "sglang_jax" and config["model_path"] == "/m"
    assert "\nrollout:\n  backend: sglang_jax\n" in result.stdout


def test_config_error_exits_2_with_one_line(tmp_path):
    result = run_trainer(["--set", "rollout.batch_size=-3"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "config error: rollout.batch_size: expected a positive integer, received -3"
    assert "Traceback" not in result.stderr


def test_dotenv_loads_without_overriding_set_variables(tmp_path):
    (tmp_path / ".env").write_text("STEPS=11\nWANDB_PROJECT=from-dotenv\nWANDB_API_KEY=" + "k" * 40 + "\n")
    result = run_trainer(["--print-config"], cwd=tmp_path, timeout=120, WANDB_PROJECT="from-shell")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["steps"] == 11 and config["wandb"]["project"] == "from-shell"
    assert "k" * 40 not in result.stdout + result.stderr


def test_python_dash_m_and_console_script_agree(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "trainer")
    via_script = subprocess.run([script, "--print-config"], cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    via_module = run_trainer(["--print-config"], cwd=tmp_path, timeout=120)
    assert via_script.returncode == 0 and via_script.stdout == via_module.stdout

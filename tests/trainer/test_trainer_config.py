"""Config precedence, validation messages, presets, --print-config and exit codes."""

import os
import subprocess
import sys

import pytest
import yaml

from tests.trainer.helpers import run_trainer
from trainer.config import ConfigError, TrainerConfig, build, load_config, to_yaml
from trainer.presets import PRESETS


def test_precedence_defaults_preset_yaml_set_env(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("steps: 5\nrollout:\n  group_size: 2\n  prompt_length: 64\n")
    config = load_config("smoke", str(config_file), ["rollout.group_size=4", "steps=7"],
                         environ={"STEPS": "9", "MODEL_PATH": "/models/qwen"})
    assert config.rollout.backend == "sglang_jax"  # from the preset
    assert config.rollout.prompt_length == 64  # the file beat the preset's 512
    assert config.rollout.group_size == 4  # --set beat the file
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
               "GLOBAL_LENGTH": "96",
               "BETA": "0.04", "WANDB_PROJECT": "p", "WANDB_NAME": "n", "SGLANG_JAX_MAX_TOTAL_TOKENS": "4096",
               "SGLANG_JAX_MEM_FRACTION_STATIC": "0.1", "SGLANG_JAX_DTYPE": "bfloat16",
               "SGLANG_JAX_CONTEXT_LENGTH": "512", "TRAIN_UNRELATED": "x"}
    config = load_config(None, sets=["train.micro_batch_size=8"], environ=environ)
    assert (config.rollout.backend, config.rollout.batch_size, config.rollout.group_size) == ("sglang_jax", 2, 4)
    assert (config.rollout.max_new_tokens, config.rollout.prompt_length, config.train.beta) == (16, 96, 0.04)
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
                                 "rollout.group_size = 128, received 7"),
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


RENAMED = [("rollout.num_pre_q", "rollout.group_size"), ("rollout.global_length", "rollout.prompt_length"),
           ("rollout.max_length_sample", "rollout.max_new_tokens")]


@pytest.mark.parametrize("old, new", RENAMED)
def test_an_old_key_on_set_or_in_yaml_names_its_new_name(tmp_path, old, new):
    message = f"{old}: expected its new name {new}, received {old!r}"
    with pytest.raises(ConfigError) as error:
        load_config(None, sets=[f"{old}=4"], environ={})
    assert str(error.value) == message
    section, key = old.split(".")
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"{section}:\n  {key}: 4\n")
    with pytest.raises(ConfigError) as error:
        load_config(None, str(config_file), environ={})
    assert str(error.value) == message


def test_an_old_key_exits_2_with_one_line(tmp_path):
    result = run_trainer(["--print-config", "--set", "rollout.num_pre_q=4"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == ("config error: rollout.num_pre_q: expected its new name rollout.group_size, "
                                     "received 'rollout.num_pre_q'")


def test_every_preset_is_valid_and_smoke_matches_the_sop():
    for name in PRESETS:
        load_config(name, environ={})
    smoke = load_config("smoke", environ={})
    assert smoke.steps == 1 and smoke.rollout.backend == "sglang_jax"
    assert (smoke.rollout.batch_size, smoke.rollout.group_size) == (1, 4)
    assert (smoke.rollout.prompt_length, smoke.rollout.max_new_tokens, smoke.train.beta) == (512, 64, 0.0)


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


NUMBER_SPELLINGS = [("1e-6", 1e-6), ("1E-6", 1e-6), ("3e-5", 3e-5), (".5", 0.5), ("1_000", 1000.0), ("2.5e+3", 2500.0),
                    ("1.", 1.0), ("7", 7.0)]


@pytest.mark.parametrize("text, value", NUMBER_SPELLINGS)
def test_every_spelling_of_a_number_is_a_number_on_set(text, value):
    config = load_config(None, sets=[f"optim.learning_rate={text}", f"reward.weights.format={text}"], environ={})
    assert config.optim.learning_rate == value and config.reward.weights["format"] == value


@pytest.mark.parametrize("text, value", NUMBER_SPELLINGS)
def test_every_spelling_of_a_number_is_a_number_in_yaml(tmp_path, text, value):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"optim:\n  learning_rate: {text}\ntrain:\n  beta: {text}\n")
    config = load_config(None, str(config_file), environ={})
    assert config.optim.learning_rate == value and config.train.beta == value


@pytest.mark.parametrize("text, value", NUMBER_SPELLINGS)
def test_every_spelling_of_a_number_is_a_number_from_the_environment(text, value):
    config = load_config(None, environ={"BETA": text})
    assert config.train.beta == value


def test_a_learning_rate_in_scientific_notation_reaches_the_trainer_command(tmp_path):
    result = run_trainer(["--print-config", "--set", "optim.learning_rate=1e-6"], cwd=tmp_path, timeout=120,
                         BETA="4e-2")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["optim"]["learning_rate"] == 1e-6 and config["train"]["beta"] == 0.04


@pytest.mark.parametrize("text, message", [
    ("nan", "train.beta: expected a number, received 'nan'"),
    (".nan", "train.beta: expected a finite number, received nan"),
    (".inf", "train.beta: expected a finite number, received inf"),
    ("1e400", "train.beta: expected a finite number, received '1e400'"),
    ("1e-6x", "train.beta: expected a number, received '1e-6x'"),
    ("1e-6 1e-6", "train.beta: expected a number, received '1e-6 1e-6'"),
])
def test_text_that_only_looks_like_a_number_is_refused(text, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, sets=[f"train.beta={text}"], environ={})
    assert str(error.value) == message


def test_integer_and_text_fields_keep_their_spelling_rules():
    config = load_config(None, sets=["steps=1_000", "wandb.name=1e-6"], environ={})
    assert config.steps == 1000 and config.wandb.name == "1e-6"
    with pytest.raises(ConfigError, match=r"^steps: expected an integer, received '1e3'$"):
        load_config(None, sets=["steps=1e3"], environ={})

"""The `trainer` command in child processes: the cpu-tiny learning run, SIGTERM, failures, the smoke preset
on CPU, several CPU devices, and a simulated two-host pod."""

import json

import numpy as np

from tests.trainer.helpers import run_pod, run_trainer, sigterm_at_step, start_trainer, step_lines


def test_cpu_tiny_learns_synthetic_sums_by_rl_alone(tmp_path):
    """The default preset: a random tiny model; reward over the last 10 steps clearly above the first 10."""
    result = run_trainer(["--set", f"out_dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\nrollout:\n  backend: jax\n" in result.stdout
    rewards = np.array([float(m.group(4)) for m in step_lines(result.stdout)])
    assert len(rewards) == 40
    first, last = rewards[:10].mean(), rewards[-10:].mean()
    print(f"cpu-tiny reward: first 10 steps {first:.3f}, last 10 steps {last:.3f}")
    assert last > first + 0.2, rewards


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes(tmp_path):
    out_dir = tmp_path / "run"
    child = start_trainer(["--set", f"out_dir={out_dir}", "--set", "steps=1000"], cwd=tmp_path)
    stdout, stderr = sigterm_at_step(child, 2)
    assert child.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    saved = [line for line in stdout.splitlines() if line.startswith("SIGTERM: saved checkpoint ")]
    assert len(saved) == 1
    saved_step = int(saved[0].split()[3])
    assert saved_step in (3, 4)  # after step 2, or after step 3 if the signal landed once it had begun
    assert (out_dir / "checkpoints" / str(saved_step)).is_dir()

    resumed = run_trainer(["--set", f"out_dir={out_dir}", "--set", f"steps={saved_step + 1}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from checkpoint {saved_step} " in resumed.stdout
    assert [int(m.group(1)) for m in step_lines(resumed.stdout)] == [saved_step]


def test_a_failure_exits_1_with_one_traceback(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    result = run_trainer(["--set", f"out_dir={tmp_path / 'run'}", "--set", "data.source=gsm8k",
                          "--set", f"data.path={empty}"], cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    assert result.stderr.count("Traceback (most recent call last)") == 1
    assert "FileNotFoundError: data.path" in result.stderr


def test_smoke_preset_on_cpu_with_a_local_model_and_data(tmp_path, tiny_model_dir, gsm8k_dir):
    result = run_trainer(["--preset", "smoke", "--set", f"model_path={tiny_model_dir}",
                          "--set", f"data.path={gsm8k_dir}", "--set", "rollout.backend=jax",
                          "--set", f"out_dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m.group(1) for m in step_lines(result.stdout)] == ["0"]
    assert "  prompt_length: 512\n  max_new_tokens: 64\n" in result.stdout
    # Memory allows here: float32 master weights, so Lion's updates at 1e-6 are kept and nothing warns.
    assert "\nmodel:\n  dtype: float32\n  param_dtype: float32\n" in result.stdout
    assert "warning:" not in result.stdout + result.stderr


def _step_values(stdout: str) -> list[tuple[str, ...]]:
    return [m.groups()[:4] for m in step_lines(stdout)]


def test_two_process_pod_on_cpu_matches_one_process(tmp_path):
    """Two processes x two CPU devices form one JAX job (fsdp over 4 devices) and print the same step lines
    as a single process with one device: the data split and the gathers lose nothing."""
    args = ["--set", f"out_dir={tmp_path / 'run'}", "--set", "steps=3", "--set", "distributed_timeout_s=60"]
    outputs = run_pod(args, cwd=tmp_path)
    for code, _, stderr in outputs:
        assert code == 0, stderr[-3000:]
    assert "num_cpu_devices: 2" in outputs[0][1]
    pod = [_step_values(stdout) for _, stdout, _ in outputs]
    assert pod[0] == pod[1] and len(pod[0]) == 3
    # Both processes have this out_dir; process 0 alone writes metrics.jsonl: one header, each step once.
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert kinds == ["header", "step", "step", "step"]

    single = run_trainer(args, cwd=tmp_path / "..", timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    for (step, loss, entropy, reward), (step1, loss1, entropy1, reward1) in zip(pod[0], _step_values(single.stdout), strict=True):
        assert (step, reward) == (step1, reward1)
        assert abs(float(loss) - float(loss1)) < 1e-5 and abs(float(entropy) - float(entropy1)) < 2e-4


def test_fsdp_and_tp_mesh_on_four_cpu_devices(tmp_path):
    result = run_trainer(["--set", f"out_dir={tmp_path / 'run'}", "--set", "steps=2", "--set", "mesh_shape=1,2,2",
                          "--set", "num_cpu_devices=4"], cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(step_lines(result.stdout)) == 2


def test_a_mesh_that_does_not_fit_the_devices_is_a_config_error(tmp_path):
    result = run_trainer(["--set", f"out_dir={tmp_path / 'run'}", "--set", "mesh_shape=1,3,1",
                          "--set", "num_cpu_devices=4"], cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == ("config error: mesh_shape: expected sizes multiplying to the 4 devices, "
                                     "received '1,3,1'")

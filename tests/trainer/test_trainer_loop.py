"""The loop end to end in-process: a scripted backend, W&B offline records, evaluation, checkpoint resume."""

import hashlib
import os
import signal

import jax
import numpy as np
import pytest

from tests.trainer.helpers import STEP_LINE, wandb_history, wrapping_generate
from trainer.config import load_config
from trainer.data import load_gsm8k
from trainer.loop import train
from trainer.rollout import make_backend
from trainer.rollout.mock import MockBackend
from trainer.runtime import start


def _config(tmp_path, *sets):
    return load_config(None, sets=[f"out_dir={tmp_path / 'run'}", *sets], environ={})


def _answer_even_rows(gsm8k_dir):
    """A scripted policy: rows with an even index answer correctly in GSM8K's format, odd rows say 0."""
    answers = {p.question: p.answer for split in ("train", "test") for p in load_gsm8k(split, str(gsm8k_dir))}

    def complete(prompt: str, row: int) -> str:
        gold = next(answer for question, answer in answers.items() if question in prompt)
        return f"I think.\n#### {gold}" if row % 2 == 0 else "#### 0"

    return complete


def _mock_factory(complete, created: list, logp: float | None = None):
    def factory(config, model, runtime, tokenizer, model_dir):
        created.append(MockBackend(tokenizer, complete, logp))
        return created[-1]

    return factory


def test_scripted_rollouts_give_the_hand_computed_step_lines_and_wandb_rows(tmp_path, monkeypatch, gsm8k_dir,
                                                                              tiny_model_dir):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    config = _config(tmp_path, f"model_path={tiny_model_dir}", "data.source=gsm8k", f"data.path={gsm8k_dir}",
                     "rollout.prompt_length=384", "rollout.max_new_tokens=24", "rollout.batch_size=4",
                     "rollout.group_size=4", "train.micro_batch_size=8", "train.loss_type=grpo", "steps=3",
                     "wandb.mode=offline",
                     "wandb.name=unit", "eval.every_steps=3", "eval.batches=2")
    lines, backends = [], []
    train(config, start(config), _mock_factory(_answer_even_rows(gsm8k_dir), backends), out=lines.append)

    assert "rollout:\n  backend: jax\n" in lines[0] and "  dtype: float32\n" in lines[0]
    steps = [STEP_LINE.match(line) for line in lines if line.startswith("step=")]
    assert [m.group(1) for m in steps] == ["0", "1", "2"]
    # Half the rows are right: reward 0.5. With one update per batch the ratio is 1, so the grpo loss is
    # minus the mean advantage over rows, which is 0 in every group.
    assert all(m.group(4) == "0.5000" and m.group(2) == "0.000000" for m in steps)
    assert "eval step=2 pass@1=0.5000 problems=24" in lines
    assert backends[0].pushes == 1 + 3  # before the first step and after every update

    rows, exit_code = wandb_history(tmp_path / "wandb-dir")
    assert exit_code == 0 and [row["_step"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert row["reward"] == 0.5 and row["reward_std"] == 0.5 and row["frac_reward_zero_std"] == 0.0
        assert row["rewards/correctness/mean"] == 0.5 and row["completions/clipped_ratio"] == 0.0
        for key in ("entropy", "clip_ratio/region_mean", "completions/mean_length", "grad_norm",
                    "throughput/completion_tokens_per_s", "time/rollout_s", "time/update_s", "learning_rate"):
            assert key in row
    assert rows[2]["eval/pass@1"] == 0.5


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_the_loss_at_one_update_per_batch_is_minus_the_weighted_mean_advantage(tmp_path, gsm8k_dir, tiny_model_dir,
                                                                               loss_type):
    """At mu = 1 the ratio is 1, so the loss is -sum_i w_i A_i: 0 for grpo's equal row weights, not for the
    length-weighted dapo and dr_grpo (right answers are longer than wrong ones here)."""
    texts, backends = [], []
    complete = _answer_even_rows(gsm8k_dir)

    def recording(prompt, row):
        texts.append(complete(prompt, row))
        return texts[-1]

    config = _config(tmp_path, f"model_path={tiny_model_dir}", "data.source=gsm8k", f"data.path={gsm8k_dir}",
                     "rollout.prompt_length=384", "rollout.max_new_tokens=24", "rollout.batch_size=4",
                     "rollout.group_size=4", "train.micro_batch_size=8", "steps=1", f"train.loss_type={loss_type}")
    lines = []
    train(config, start(config), _mock_factory(recording, backends), out=lines.append)
    lengths = np.array([min(len(backends[0].tokenizer.encode(text)) + 1, 24) for text in texts])  # + stop token
    advantage = 0.5 / (0.5 + 1e-4)  # rewards 1, 0, 1, 0 in every group: mean 0.5, std 0.5
    advantages = np.where(np.arange(16) % 2 == 0, advantage, -advantage)
    expected = {"grpo": 0.0, "dapo": -(lengths * advantages).sum() / lengths.sum(),
                "dr_grpo": -(lengths * advantages).sum() / (16 * 24)}[loss_type]
    (line,) = [m for m in map(STEP_LINE.match, lines) if m]
    assert float(line.group(2)) == pytest.approx(expected, abs=1.5e-6)
    assert loss_type == "grpo" or abs(expected) > 0.05


@pytest.mark.parametrize("sets, warning", [
    (["model.param_dtype=bfloat16", "optim.name=lion", "optim.learning_rate=1e-6"],  # the smoke preset's
     "warning: optim.learning_rate 1e-06 is below bfloat16's resolution at the weights' scale: an update that "
     "size leaves 99.5% of the weights unchanged; float32 master weights (model.param_dtype=float32, compute "
     "stays in model.dtype) keep them, memory permitting"),
    (["optim.learning_rate=1e-12"],
     "warning: optim.learning_rate 1e-12 is below float32's resolution at the weights' scale: an update that "
     "size leaves 100.0% of the weights unchanged; raise optim.learning_rate"),
    (["model.param_dtype=bfloat16", "optim.learning_rate=1e-3"], None),
    (["optim.learning_rate=1e-6"], None),
])
def test_a_learning_rate_the_weights_cannot_represent_warns_at_start(tmp_path, tiny_model_dir, sets, warning):
    config = _config(tmp_path, f"model_path={tiny_model_dir}", "steps=1", "rollout.batch_size=2",
                     "rollout.group_size=4", "train.micro_batch_size=8", *sets)
    lines = []
    train(config, start(config), _mock_factory(lambda prompt, row: "#### 1", []), out=lines.append)
    assert [line for line in lines if line.startswith("warning:")] == ([warning] if warning else [])


@pytest.mark.parametrize("device_gib, expected", [(8.0, "float32"), (0.002, "bfloat16")])
def test_auto_master_weights_follow_the_device_memory(tmp_path, monkeypatch, tiny_model_dir, device_gib, expected):
    """The smoke preset's `auto` on devices of a given size (a TPU's limit cannot be had here, so the size
    is given): the tiny model's float32 state with Lion is 16 bytes x its parameters."""
    import trainer.auto_values as auto_values
    from trainer.auto_values import resolve_auto_values
    from trainer.model.qwen2 import Qwen2Config

    monkeypatch.setattr(auto_values, "device_memory_bytes", lambda platform: int(device_gib * 2**30))
    config = load_config("smoke", sets=[f"model_path={tiny_model_dir}", "rollout.backend=jax",
                                        f"out_dir={tmp_path}"], environ={})
    lines = []
    resolved = resolve_auto_values(config, start(config), tiny_model_dir, out=lines.append)
    assert config.model.param_dtype == "auto" and resolved.model.param_dtype == expected
    needed = Qwen2Config.from_dir(tiny_model_dir).num_params() * 16
    assert needed > 0.75 * 0.002 * 2**30  # so 2 MiB devices are too small, 8 GiB ones are not
    assert lines == ([] if expected == "float32" else [
        f"model.param_dtype auto: bfloat16, because float32 master weights would need about "
        f"{needed / 2**30:.3g} GiB per device with the engine's weights, over 75% of the 0.002 GiB a device has"])


def test_wandb_init_failure_warns_and_training_goes_on(tmp_path, monkeypatch, capsys, gsm8k_dir, tiny_model_dir):
    import wandb

    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured")

    monkeypatch.setattr(wandb, "init", refuse)
    config = _config(tmp_path, f"model_path={tiny_model_dir}", "steps=1", "wandb.mode=online",
                     "rollout.batch_size=2", "rollout.group_size=4", "train.micro_batch_size=8")
    lines = []
    train(config, start(config), _mock_factory(lambda prompt, row: "#### 1", []), out=lines.append)
    assert sum(line.startswith("step=0 ") for line in lines) == 1
    assert "warning: W&B disabled, init failed: UsageError" in capsys.readouterr().err


def test_dynamic_sampling_and_kl_show_in_metrics(tmp_path, monkeypatch, gsm8k_dir, tiny_model_dir):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    config = _config(tmp_path, f"model_path={tiny_model_dir}", "steps=1", "wandb.mode=offline",
                     "rollout.batch_size=2", "rollout.group_size=4", "train.micro_batch_size=8",
                     "train.dynamic_sampling=true", "train.beta=0.1", "train.num_iterations=2")
    # Every row of every group answers the same: all groups are uninformative and drop out of the loss.
    train(config, start(config), _mock_factory(lambda prompt, row: "#### 1", []), out=lambda line: None)
    rows, _ = wandb_history(tmp_path / "wandb-dir")
    assert rows[0]["frac_reward_zero_std"] == 1.0
    assert rows[0]["loss"] == 0.0  # no token counts in the loss ...
    assert rows[0]["entropy"] > 1.0  # ... but the statistics still describe the policy (~6.2 nats here)
    assert "kl" in rows[0]


def _shifted_logps_fn(calls: list):
    """The trainer's separate log-prob forward, disagreeing with the update's own forward by 0.5 nats, as
    two differently compiled bf16 forwards may on a TPU."""
    import trainer.loop as loop_module

    real = loop_module.make_logps_fn

    def make(model, mesh, temperature, num_micro):
        fn = real(model, mesh, temperature, num_micro)

        def shifted(*args, prompt_group: int = 1):
            calls.append(prompt_group)
            return fn(*args, prompt_group=prompt_group) - 0.5

        return shifted

    return make


@pytest.mark.parametrize("sets, separate_forwards", [
    (["rollout.backend=sglang_jax"], 0),  # one update per batch: the ratio's denominator is the detached current
    (["rollout.backend=sglang_jax", "train.num_iterations=2"], 1),  # the policy before the first update
    (["train.importance_sampling_cap=2.0"], 1),  # the IS weight needs pi_old
])
def test_old_log_probs_come_from_a_separate_forward_only_when_needed(tmp_path, monkeypatch, gsm8k_dir, tiny_model_dir,
                                                                     sets, separate_forwards):
    import trainer.loop as loop_module

    calls = []
    monkeypatch.setattr(loop_module, "make_logps_fn", _shifted_logps_fn(calls))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    config = _config(tmp_path, f"model_path={tiny_model_dir}", "data.source=gsm8k", f"data.path={gsm8k_dir}",
                     "rollout.prompt_length=384", "rollout.max_new_tokens=8", "rollout.batch_size=2",
                     "rollout.group_size=4", "train.micro_batch_size=8", "steps=1", "wandb.mode=offline", *sets)
    # The engine's log-probs, which the importance weight needs: any value, the weight is not what is checked.
    train(config, start(config), _mock_factory(_answer_even_rows(gsm8k_dir), [], logp=-1.0), out=lambda line: None)
    rows, _ = wandb_history(tmp_path / "wandb-dir")
    assert calls == [4] * separate_forwards  # the loop's rows: each prompt 4 times, its forward shared
    if not separate_forwards:  # ratio exactly 1: nothing clipped, whatever the other forward says
        assert rows[0]["clip_ratio/region_mean"] == 0.0
    else:  # the shifted pi_old makes the ratio e^0.5 > 1 + eps_high: the positive-advantage half clips
        assert rows[0]["clip_ratio/region_mean"] > 0.2


def _rollout_logps_off_by(offset: float):
    """The real JAX sampler, reporting log-probs `offset` nats above its own on generated tokens."""

    def off_by(generate):
        def shifted(*args, **kwargs):
            out = generate(*args, **kwargs)
            out.logps_NxC = out.logps_NxC + offset * out.completion_mask_NxC
            return out

        return shifted

    return wrapping_generate(off_by)


@pytest.mark.parametrize("offset, sets", [(0.0, []), (0.25, []), (0.25, ["train.num_iterations=2"])])
def test_the_rollout_trainer_log_prob_mismatch_is_logged(tmp_path, monkeypatch, offset, sets):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    config = _config(tmp_path, "steps=2", "wandb.mode=offline", "rollout.batch_size=2", "rollout.group_size=4",
                     "train.micro_batch_size=8", *sets)
    train(config, start(config), _rollout_logps_off_by(offset), out=lambda line: None)
    rows, _ = wandb_history(tmp_path / "wandb-dir")
    for row in rows:  # the sampler and the trainer agree to float32 rounding on CPU
        assert abs(row["rollout/logprob_mismatch_mean"] - offset) < 1e-4
        assert abs(row["rollout/logprob_mismatch_max"] - offset) < 1e-3


def _final_params(tmp_path):
    from trainer.checkpoint import Checkpointer

    checkpointer = Checkpointer(tmp_path / "run" / "checkpoints", 5)
    step = checkpointer.latest_step()
    restored = checkpointer._manager.restore(step)
    checkpointer.close()
    return step, restored["state"]["params"]


class Crash(Exception):
    pass


def _crashing_after(generates: int):
    """The real JAX sampler, failing on call number generates + 1 (a crash in the middle of a run)."""

    def crashing(generate):
        calls = []

        def counted(*args, **kwargs):
            calls.append(1)
            if len(calls) > generates:
                raise Crash()
            return generate(*args, **kwargs)

        return counted

    return wrapping_generate(crashing)


def test_resume_after_a_crash_continues_exactly_like_an_uninterrupted_run(tmp_path):
    config_a = _config(tmp_path / "a", "checkpoint.every_steps=2", "steps=4")
    config_b = _config(tmp_path / "b", "checkpoint.every_steps=2", "steps=4")
    straight, crashed, resumed = [], [], []
    train(config_a, start(config_a), out=straight.append)
    with pytest.raises(Crash):
        train(config_b, start(config_b), _crashing_after(3), out=crashed.append)  # dies in step 3
    train(config_b, start(config_b), out=resumed.append)

    assert any(line.startswith("resumed from checkpoint 2 ") for line in resumed)
    def strip_dt(lines):
        return [line.rsplit(" dt=", 1)[0] for line in lines if line.startswith("step=")]

    assert strip_dt(crashed) == strip_dt(straight)[:3]
    assert strip_dt(resumed) == strip_dt(straight)[2:]  # step 2 runs again from the checkpoint
    step_a, params_a = _final_params(tmp_path / "a")
    step_b, params_b = _final_params(tmp_path / "b")
    assert step_a == step_b == 4
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_finished_run_resumes_to_nothing(tmp_path):
    config = _config(tmp_path, "checkpoint.every_steps=1", "steps=1")
    train(config, start(config), out=lambda line: None)
    lines = []
    train(config, start(config), out=lines.append)
    assert "resumed from checkpoint 1 " in " ".join(lines) and not any(line.startswith("step=") for line in lines)


@pytest.mark.parametrize("bad", ["rollout.batch_size=3"])
def test_rows_must_divide_the_data_parallel_devices(tmp_path, bad):
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="train.micro_batch_size: expected a divisor"):
        _config(tmp_path, bad, "train.micro_batch_size=16")


class StepRecorder:
    """Wraps the real JAX sampler and train step: records each rollout's seed and prompts, and sends this
    process a real SIGTERM in the middle of one phase (rollout, update or push) of one step."""

    def __init__(self, monkeypatch, phase: str | None = None, step: int = -1):
        import trainer.loop as loop_module

        self.phase, self.step, self.rollouts, self.updates, self.pushes = phase, step, [], 0, 0
        real_make_train_step = loop_module.make_train_step

        def make_train_step(*args, **kwargs):
            real_step = real_make_train_step(*args, **kwargs)

            def train_step(state, batch):
                self.updates += 1
                self._maybe_terminate("update", self.updates - 1)
                return real_step(state, batch)

            return train_step

        monkeypatch.setattr(loop_module, "make_train_step", make_train_step)

    def _maybe_terminate(self, phase: str, step: int) -> None:
        if (phase, step) == (self.phase, self.step):
            os.kill(os.getpid(), signal.SIGTERM)

    def factory(self, *args):
        backend = make_backend(*args)
        real_generate, real_push = backend.generate, backend.push_weights

        def generate(prompt_ids, prompt_mask, settings, seed):
            self.rollouts.append((seed, hashlib.sha256(prompt_ids.tobytes()).hexdigest()))
            self._maybe_terminate("rollout", len(self.rollouts) - 1)
            return real_generate(prompt_ids, prompt_mask, settings, seed)

        def push_weights(params):
            self.pushes += 1
            self._maybe_terminate("push", self.pushes - 2)  # the first push is before step 0
            return real_push(params)

        backend.generate, backend.push_weights = generate, push_weights
        return backend


def _step_lines_without_dt(lines):
    return [line.rsplit(" dt=", 1)[0] for line in lines if line.startswith("step=")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("straight")
    config = _config(tmp_path, "steps=4", "checkpoint.every_steps=100")
    lines = []
    with pytest.MonkeyPatch.context() as patch:
        recorder = StepRecorder(patch)
        train(config, start(config), recorder.factory, out=lines.append)
    return recorder.rollouts, _step_lines_without_dt(lines), _final_params(tmp_path)


@pytest.mark.parametrize("phase, saved_step", [("rollout", 2), ("update", 3), ("push", 3)])
def test_sigterm_in_any_phase_resumes_exactly_like_an_uninterrupted_run(tmp_path, monkeypatch, uninterrupted, phase,
                                                                       saved_step):
    """SIGTERM during step 2's rollout saves the state step 2 started from; during its update or push, the
    state after it. Either way the resumed run draws the same seeds and prompts and computes the same
    losses and weights as a run never stopped."""
    from trainer.loop import Terminated

    straight_rollouts, straight_lines, (final_step, final_params) = uninterrupted
    config = _config(tmp_path, "steps=4", "checkpoint.every_steps=100")
    stopped, resumed = [], []
    recorder = StepRecorder(monkeypatch, phase, step=2)
    with pytest.raises(Terminated):
        train(config, start(config), recorder.factory, out=stopped.append)
    assert f"SIGTERM: saved checkpoint {saved_step} " in " ".join(stopped)
    assert recorder.rollouts == straight_rollouts[:3]

    again = StepRecorder(monkeypatch)
    train(config, start(config), again.factory, out=resumed.append)
    assert f"resumed from checkpoint {saved_step} " in " ".join(resumed)
    assert again.rollouts == straight_rollouts[saved_step:]  # same seeds and prompts, step for step
    assert _step_lines_without_dt(stopped) == straight_lines[:saved_step]
    assert _step_lines_without_dt(resumed) == straight_lines[saved_step:]  # losses printed to 1e-6
    step, params = _final_params(tmp_path)
    assert step == final_step == 4
    for a, b in zip(jax.tree.leaves(final_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))

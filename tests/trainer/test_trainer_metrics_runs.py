"""metrics.jsonl from real trainer runs: the values of the step lines and of W&B, no step missing or twice
after a SIGTERM and resume or after a crash past a checkpoint, and `trainer report` on the result."""

import subprocess
import sys
import time

import yaml

from tests.trainer.helpers import (
    ALWAYS_PANELS,
    STEP_LINE,
    check_offline_page,
    run_trainer,
    sigterm_at_step,
    start_trainer,
    subprocess_env,
    wandb_history,
)
from trainer.metrics import step_line
from trainer.metrics_log import FILE_NAME, read_metrics

STEP_KEYS = ("kind", "step", "timestamp")


def printed_step_lines(stdout: str) -> dict[int, str]:
    lines = [line for line in stdout.splitlines() if STEP_LINE.match(line)]
    return {int(STEP_LINE.match(line).group(1)): line for line in lines}


def as_step_line(record: dict) -> str:
    """The step line the trainer prints, rebuilt from the file's exact values."""
    return step_line(record["step"], record["loss"], record["entropy"], record["reward"], record["time/step_s"])


def as_eval_line(record: dict) -> str:
    return f"eval step={record['step']} pass@1={record['eval/pass@1']:.4f} problems={int(record['eval/num_problems'])}"


def test_sigterm_then_resume_leaves_every_step_once_with_the_printed_values(tmp_path):
    out_dir = tmp_path / "run"
    child = start_trainer(["--set", f"out_dir={out_dir}", "--set", "steps=1000"], cwd=tmp_path)
    first, stderr = sigterm_at_step(child, 2)
    assert child.returncode == 143, stderr[-3000:]
    saved = int(next(line for line in first.splitlines() if line.startswith("SIGTERM: saved")).split()[3])
    interrupted = read_metrics(out_dir / FILE_NAME)
    assert [r["step"] for r in interrupted.steps] == list(range(saved))
    assert yaml.safe_dump(interrupted.header["config"], sort_keys=False).rstrip() in first  # the printed config

    resumed = run_trainer(["--set", f"out_dir={out_dir}", "--set", f"steps={saved + 2}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = read_metrics(out_dir / FILE_NAME)
    assert [r["step"] for r in run.steps] == list(range(saved + 2)) and run.skipped_lines == []
    printed = printed_step_lines(first) | printed_step_lines(resumed.stdout)
    assert [as_step_line(r) for r in run.steps] == [printed[s] for s in range(saved + 2)]
    headers = [line for line in (out_dir / FILE_NAME).read_text().splitlines() if '"kind": "header"' in line]
    assert len(headers) == 2
    assert (run.header["start_step"], run.header["total_steps"]) == (saved, saved + 2)


def _wait_for_step(path, step: int, child: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        if path.exists() and any(r["step"] >= step for r in read_metrics(path).steps):
            return
        time.sleep(0.02)
    raise AssertionError(f"no line for step {step} in {path}; trainer exit code {child.poll()}")


def test_a_crash_after_a_checkpoint_is_truncated_back_on_resume_and_the_report_renders(tmp_path):
    out_dir = tmp_path / "run"
    args = ["--set", f"out_dir={out_dir}", "--set", "checkpoint.every_steps=3", "--set", "eval.every_steps=2"]
    child = start_trainer([*args, "--set", "steps=1000"], cwd=tmp_path)
    _wait_for_step(out_dir / FILE_NAME, 3, child)  # checkpoint 3 is complete: it is saved before step 3 runs
    child.kill()
    first, _ = child.communicate(timeout=60)
    checkpoint = max(int(p.name) for p in (out_dir / "checkpoints").iterdir() if p.name.isdigit())
    before = read_metrics(out_dir / FILE_NAME)
    assert checkpoint == 3 and before.steps[-1]["step"] >= 3  # lines past the checkpoint are in the file

    resumed = run_trainer([*args, "--set", "steps=6"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint 3 " in resumed.stdout
    run = read_metrics(out_dir / FILE_NAME)
    assert [r["step"] for r in run.steps] == list(range(6)) and [r["step"] for r in run.evals] == [1, 3, 5]
    printed = printed_step_lines(first) | printed_step_lines(resumed.stdout)  # the rerun's lines win for 3..
    assert [as_step_line(r) for r in run.steps] == [printed[s] for s in range(6)]
    assert [as_step_line(r) for r in run.steps[3:]] == list(printed_step_lines(resumed.stdout).values())
    evals = [line for line in (first + resumed.stdout).splitlines() if line.startswith("eval step=")]
    assert evals[0] == as_eval_line(run.evals[0]) and evals[-2:] == [as_eval_line(r) for r in run.evals[1:]]

    report = subprocess.run([sys.executable, "-m", "trainer", "report", str(out_dir), "--smooth", "0.5"],
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    # The built-in sampler returns its log-probs, so the rollout/trainer mismatch panel is drawn too.
    expected = ALWAYS_PANELS[:1] + ["eval_pass_at_1"] + ALWAYS_PANELS[1:4] + ["logprob_mismatch"] + ALWAYS_PANELS[4:]
    check_offline_page(out_dir / "report" / "report.html", expected)


def test_the_file_holds_what_wandb_logs(tmp_path, monkeypatch):
    """In process, W&B offline: each step's line (eval line merged) is the W&B row, key for key, value for value."""
    from trainer.config import load_config
    from trainer.loop import train
    from trainer.runtime import start

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    config = load_config(None, sets=[f"out_dir={tmp_path / 'run'}", "steps=2", "wandb.mode=offline",
                                     "eval.every_steps=2", "rollout.batch_size=4"], environ={})
    train(config, start(config), out=lambda line: None)
    rows, _ = wandb_history(tmp_path / "wandb-dir")
    run = read_metrics(tmp_path / "run" / FILE_NAME)
    evals = {r["step"]: r for r in run.evals}
    for row, record in zip(rows, run.steps, strict=True):
        merged = {k: v for k, v in (record | evals.get(record["step"], {})).items() if k not in STEP_KEYS}
        assert merged == {k: v for k, v in row.items() if not k.startswith("_")}
        assert row["_step"] == record["step"]
    assert "eval/pass@1" in rows[1] and len(rows) == 2

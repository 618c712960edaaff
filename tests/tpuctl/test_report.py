"""`tpuctl report` and the progress in `tpuctl status` against real sshd workers, on hostile metrics.jsonl
files a worker holds (garbage, a torn line, NaN, the largest step), missing files, bad options, `--open`,
and without JAX or matplotlib on the laptop. The real trainer's runs are in tests/e2e/test_report.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.tpuctl.helpers import exit_text, logs, run
from tests.trainer.helpers import check_offline_page
from trainer.metrics_log import encode_line

HEADER = {"kind": "header", "schema": 1, "started_at": "2025-06-01T12:00:00Z", "start_step": 0, "total_steps": 40,
          "config": {"model_path": "<script>alert(1)</script>", "rollout": {"backend": "jax"}}}


def step(index: int, **values: float) -> bytes:
    return encode_line({"kind": "step", "step": index, "timestamp": 1.0 + index, **values})


HOSTILE = (encode_line(HEADER) + step(0, reward=0.1, reward_std=0.05, entropy=1.0, **{"time/step_s": 30.0})
           + b"\x00garbage \x1b[31m\n[1, 2]\n"
           + step(1, reward=float("nan"), reward_std=float("inf"), entropy=0.9, **{"time/step_s": float("nan")})
           + step(2, reward=0.3, reward_std=0.1, entropy=0.8, **{"time/step_s": 2.0})
           + step(3, reward=0.4, reward_std=0.1, entropy=0.7, **{"time/step_s": 4.0})
           + b'{"kind": "step", "step": 100000000000000000000000000000, "reward": 9}\n'
           + b'{"kind": "step", "step": 4, "rew')  # torn: being written


def finished_run(project, name: str = "train") -> Path:
    """A finished fake run; returns where the trainer's metrics.jsonl link would be on worker 0."""
    assert run("launch", "--name", name, "--", "./fake_trainer.sh", "--steps", "2").code == 0
    assert exit_text(project, name) == "0"
    log = (logs(project) / f"{name}_latest.log").resolve()
    return log.with_name(log.name.removesuffix(".log") + ".metrics.jsonl")


def test_a_hostile_file_gives_a_page_and_a_progress(synced1):
    finished_run(synced1).write_bytes(HOSTILE)
    result = run("report")
    assert result.code == 0, result.all
    copy = synced1.folder / "reports" / "train" / "train.metrics.jsonl"
    assert copy.read_bytes() == HOSTILE and f"train: {len(HOSTILE)} new bytes" in result.out
    page = check_offline_page(synced1.folder / "reports" / "train" / "report.html", ["reward", "entropy", "step_time"])
    assert "<td>3, 4, 8</td>" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert f"report: {Path('reports') / 'train' / 'report.html'}" in result.out

    # steps 0-3 done; step 0 (compilation) left out, step 1's NaN skipped: the mean of 2 and 4 s.
    progress = json.loads(run("status", "--json").out)[0]["progress"]
    assert progress == {"steps_done": 4, "total_steps": 40, "mean_step_s": 3.0, "eta_s": 36 * 3.0}
    assert "4/40" in run("status").out and "1m48s" in run("status").out


def test_a_second_report_reads_only_what_was_appended(synced1):
    path = finished_run(synced1)
    path.write_bytes(encode_line(HEADER) + step(0, reward=0.5))
    assert run("report").code == 0
    with open(path, "ab") as handle:
        handle.write(step(1, reward=0.6))
    again = run("report", "--out", "reports/train")
    assert again.code == 0 and f": {len(step(1, reward=0.6))} new bytes" in again.out
    assert (synced1.folder / "reports" / "train" / "train.metrics.jsonl").read_bytes() == path.read_bytes()


def test_two_runs_overlay_on_one_page(synced1):
    finished_run(synced1, "a").write_bytes(encode_line(HEADER) + step(0, reward=0.5) + step(1, reward=0.7))
    finished_run(synced1, "b").write_bytes(encode_line({**HEADER, "total_steps": 3}) + step(0, reward=0.2))
    result = run("report", "--name", "a", "--name", "b", "--smooth", "0.5")
    assert result.code == 0, result.all
    folder = synced1.folder / "reports" / "a+b"
    page = check_offline_page(folder / "report.html", ["reward"])
    assert "<td>a</td><td>2 (last step 1)</td><td>40</td>" in page and "<td>b</td><td>1 (last step 0)</td><td>3</td>" in page
    assert sorted(p.name for p in folder.glob("*.jsonl")) == ["a.metrics.jsonl", "b.metrics.jsonl"]


def test_a_run_without_metrics_is_an_error_naming_the_file_and_the_others_are_kept(synced1):
    finished_run(synced1, "plain")
    finished_run(synced1, "fine").write_bytes(encode_line(HEADER) + step(0, reward=0.5))
    result = run("report", "--name", "fine", "--name", "plain")
    assert result.code == 1
    assert "run 'plain' has no metrics.jsonl yet" in result.err and ".metrics.jsonl" in result.err
    folder = synced1.folder / "reports" / "fine+plain"
    assert (folder / "fine.metrics.jsonl").exists() and not (folder / "report.html").exists()
    assert json.loads(run("status", "--name", "plain", "--json").out)[0]["progress"] is None


@pytest.mark.parametrize("args, message", [
    (("--name", "a_b"), "bad run name 'a_b'"),
    (("--name", "-x"), "bad run name '-x'"),
    (("--name", "a", "--name", "a"), "expected each run once"),
    (("--smooth", "1"), "--smooth: expected a number in [0, 1)"),
    (("--smooth", "nan"), "--smooth: expected a number in [0, 1)"),
])
def test_bad_options_are_refused_before_anything_is_fetched(project1, args, message):
    result = run("report", *args)
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1
    assert not (project1.folder / "reports").exists()


def test_an_out_that_is_a_file_and_a_progress_bar_without_following_are_refused(project1):
    (project1.folder / "notes.txt").write_text("mine\n")
    result = run("report", "--out", "notes.txt")
    assert result.code == 2 and "bad --out 'notes.txt': expected a folder" in result.err
    assert (project1.folder / "notes.txt").read_text() == "mine\n"
    result = run("tail", "--progress")
    assert result.code == 2 and "--progress: expected with --follow or --until-exit" in result.err


WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # `import name` raises ImportError, as on a laptop without it
from tpuctl.cli import main
sys.argv = ["tpuctl", *sys.argv[2:]]
main()
"""


def tpuctl_without(modules: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, modules, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_report_and_open_need_no_jax_and_the_browser_gets_the_page(synced1, tmp_path):
    finished_run(synced1).write_bytes(HOSTILE)
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {tmp_path / "opened"}\n')
    browser.chmod(0o755)
    done = tpuctl_without("jax,jaxlib,flax,optax,yaml", "report", "--open", env={"BROWSER": str(browser)})
    assert done.returncode == 0, done.stderr
    page = (synced1.folder / "reports" / "train" / "report.html").resolve()
    assert (tmp_path / "opened").read_text() == page.as_uri()


def test_report_without_matplotlib_says_which_extra_to_install(synced1):
    finished_run(synced1).write_bytes(HOSTILE)
    done = tpuctl_without("matplotlib", "report")
    assert done.returncode == 1 and "pip install 'tpuctl[report]'" in done.stderr
    assert not (synced1.folder / "reports").exists()


def test_the_progress_bar_ends_on_the_runs_last_state(synced1):
    """`tail --until-exit --progress` stops the bar when the run ends: what it shows last must be read after
    that end, not the state of up to one polling interval before (a 3-step run's bar stayed at 0/3)."""
    from tpuctl.ops.tail import ProgressWatch

    metrics = finished_run(synced1)
    metrics.write_bytes(encode_line({**HEADER, "total_steps": 3}))
    shown = []
    session, workers = synced1.session()
    with session, ProgressWatch(session, "~/repo", workers[0], "train", shown.append, interval_s=3600):
        wait_for(lambda: shown)  # the first read, before the steps: 0/3
        metrics.write_bytes(encode_line({**HEADER, "total_steps": 3}) + step(0) + step(1) + step(2))
    assert (shown[0].steps_done, shown[-1].steps_done, shown[-1].total_steps) == (0, 3, 3)

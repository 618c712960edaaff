"""Helpers for the trainer tests, imported as `tests.trainer.helpers` (fixtures stay in conftest.py):
trainer child processes and simulated pods, step lines, W&B offline records, backends with a wrapped
generate, a sglang-jax engine on the tiny model, and the checks of an offline report page."""

import base64
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from trainer.config import ENV_OVERRIDES

STEP_LINE = re.compile(r"^step=(\d+) loss=(-?\d+\.\d{6}) entropy=(\d+\.\d{4}) reward_mean=(-?\d+\.\d{4}) "
                       r"dt=(\d+\.\d{2})s$")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a trainer child process: CPU, W&B off, no stray upstream overrides."""
    env = {k: v for k, v in os.environ.items()
           if k not in ENV_OVERRIDES and not k.startswith(("WANDB_", "JAX_NUM", "JAX_COORD", "JAX_PROCESS"))}
    env |= {"JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return env | extra


def run_trainer(args: list[str], cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` in a child process (the console script's code path)."""
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def start_trainer(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """`python -m trainer ARGS` running in a child process, its output read as text."""
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=cwd, env=subprocess_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sigterm_at_step(child: subprocess.Popen, step: int, timeout: float = 300) -> tuple[str, str]:
    """SIGTERM the trainer once it prints step STEP's line; its whole stdout and stderr after it exits."""
    seen = []
    for line in child.stdout:
        seen.append(line)
        if line.startswith(f"step={step} "):
            child.send_signal(signal.SIGTERM)
            break
    rest, stderr = child.communicate(timeout=timeout)
    return "".join(seen) + rest, stderr


def run_pod(args: list[str], cwd: Path, processes: int = 2, devices_per_process: int = 2,
            timeout: float = 400, program: tuple[str, ...] = ("-m", "trainer"), **env: str) -> list[tuple[int, str, str]]:
    """A simulated pod on this machine: one trainer process per host (`python PROGRAM ARGS`), joined by
    jax.distributed as `tpuctl launch` joins a real pod's hosts. Returns (exit code, stdout, stderr) per process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    children = [subprocess.Popen([sys.executable, *program, *args], cwd=cwd, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=subprocess_env(JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i),
                                                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                    JAX_NUM_CPU_DEVICES=str(devices_per_process), **env))
                for i in range(processes)]
    outputs = [child.communicate(timeout=timeout) for child in children]
    return [(child.returncode, out, err) for child, (out, err) in zip(children, outputs, strict=True)]


def step_lines(stdout: str) -> list[re.Match]:
    return [m for m in (STEP_LINE.match(line) for line in stdout.splitlines()) if m]


def wandb_records(run_file: Path):
    """Records of a .wandb file (LevelDB log framing: 32 KiB blocks, 7-byte chunk headers) as protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = run_file.read_bytes(), 32768, 7, b""  # 7: the ':W&B' header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a header is zero padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk ends a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(wandb_dir: Path) -> tuple[list[dict], int | None]:
    """The logged rows and the exit code of the single offline run under wandb_dir."""
    import json

    (run_file,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows, exit_code = [], None
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return rows, exit_code


def wrapping_generate(wrap: Callable[[Callable], Callable]):
    """A backend factory for `train`: the real backend of the config, its generate replaced by wrap(generate)."""
    from trainer.rollout import make_backend

    def factory(*args):
        backend = make_backend(*args)
        backend.generate = wrap(backend.generate)
        return backend

    return factory


def start_sglang_engine(model_dir: Path, out_dir: Path, *sets: str):
    """The sglang_jax backend on the tiny model, sized as the trainer sizes it; (backend, model, params,
    tokenizer). The caller shuts the backend down."""
    import jax
    import jax.numpy as jnp

    from trainer.auto_values import resolve_auto_values
    from trainer.config import load_config
    from trainer.model.load import build_model
    from trainer.model.tokenizer import ChatTokenizer
    from trainer.rollout.sglang_jax import SglangJaxBackend
    from trainer.runtime import start

    config = load_config(None, sets=[f"model_path={model_dir}", "rollout.backend=sglang_jax", *sets,
                                     f"out_dir={out_dir}"], environ={})
    runtime = start(config)
    config = resolve_auto_values(config, runtime, model_dir)
    tokenizer = ChatTokenizer(model_dir)
    model, host_params = build_model(model_dir, config.model, runtime.platform)
    backend = SglangJaxBackend(config, model.config, runtime, tokenizer, model_dir)
    return backend, model, jax.tree.map(jnp.asarray, host_params), tokenizer


# Panels every report of a run draws (trainer.report.PANELS slugs, in order), whatever the run's options.
ALWAYS_PANELS = ["reward", "completion_length", "clipped_ratio", "entropy", "grad_norm", "learning_rate",
                 "tokens_per_s", "step_time"]


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)]


def check_offline_page(page_path: Path, expected_slugs: list[str]) -> str:
    """One embedded image per panel, each equal to the PNG beside the page, and nothing fetched from anywhere."""
    page = page_path.read_text()
    pngs = embedded_pngs(page)
    assert len(pngs) == len(expected_slugs) == page.count("<img ")
    for slug, png in zip(expected_slugs, pngs, strict=True):
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and (page_path.parent / f"{slug}.png").read_bytes() == png
    assert sorted(p.stem for p in page_path.parent.glob("*.png")) == sorted(expected_slugs)
    assert not re.search(r"<script|<link|@import|url\(|https?:", page, re.IGNORECASE)
    assert re.findall(r'\ssrc="([^"]{0,22})', page) == ["data:image/png;base64,"] * len(expected_slugs)
    return page

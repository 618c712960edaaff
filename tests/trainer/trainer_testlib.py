"""Helpers for the trainer tests (a unique module name: tests/ folders have no __init__.py)."""

import os
import re
import socket
import subprocess
import sys
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

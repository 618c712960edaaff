"""`metrics.jsonl`: every step's metrics in the run folder, whatever the W&B mode, for reports and progress.

Standard library only, so the laptop side (`tpuctl report`, progress in `tpuctl status`) reads it
without JAX or PyYAML.

Schema version 1: one JSON object per line, told apart by "kind".
- header: {"kind": "header", "schema": 1, "started_at": "2025-06-01T12:00:00Z", "start_step": S,
  "total_steps": N, "config": {...}}. `config` is the effective config (every section, `auto`
  values resolved) as the run prints it; `total_steps` is config.steps. One header when a run
  starts, another each time it resumes (start_step = the restored checkpoint's step); the last one
  describes the steps after it.
- step: {"kind": "step", "step": s, "timestamp": unix seconds, ...} with every metric the trainer
  logs to W&B for that step, under the same (TRL) names: loss, entropy, grad_norm, learning_rate,
  reward, reward_std, rewards/<function>/mean, frac_reward_zero_std, completions/{mean,min,max}_length,
  completions/clipped_ratio, clip_ratio/{low,high,region}_mean, throughput/completion_tokens_per_s,
  reward_errors, time/{rollout,update,weight_push,step}_s, kl (beta > 0),
  rollout/logprob_mismatch_{mean,max} (when the engine returns log-probs), time/engine_weight_push_s
  (sglang_jax). `step` is the index the step line prints (`step=0` first).
- eval: {"kind": "eval", "step": s, "timestamp": ..., "eval/pass@1": ..., "eval/num_problems": ...},
  written right after the step line of the step it followed.
Numbers are the exact floats the trainer computed (the step line rounds them). JSON has no NaN or
infinity: those are written as the strings "NaN", "Infinity", "-Infinity" and read back as floats.

Writing: process 0 only. Each line is one `os.write` of the whole line on an O_APPEND descriptor,
so a reader sees whole lines plus at most an unterminated last one, which it leaves for later.
A write error (a full disk) prints one warning and ends the writing, never the run.

Resume: the file is truncated back, not skipped over. When a run starts at step S (0, or the
restored checkpoint's step), everything from the first line that belongs to a step >= S is cut:
step and eval lines of steps >= S (written after that checkpoint, before the interruption; they
are about to run again with the restored state), a header whose start_step >= S, and a torn last
line (a crash mid-write). Then a header is appended. So no step is ever in the file twice, a
fresh start (S = 0) over an old run folder begins an empty file, and nothing else is ever
rewritten. Lines that are not JSON objects, or whose step is no index from 0 to 2^63 - 1 (a damaged
disk, a hand edit) are kept by the writer and skipped, with their line numbers, by the reader.

Where a launcher finds it: when TPUCTL_METRICS_LINK names a path (tpuctl's runner sets it to
logs/NAME_STAMP.metrics.jsonl beside the run's log), process 0 points a symlink there at the
file's absolute path once its header is written. That is how `tpuctl report` and `tpuctl status`
find the file of a run whatever its out_dir; a link that cannot be made only warns.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

FILE_NAME = "metrics.jsonl"
LINK_ENV = "TPUCTL_METRICS_LINK"
SCHEMA_VERSION = 1
MAX_STEP = 2**63 - 1  # a step index beyond int64 (numpy's, so the report's axes) is a damaged line, not a step
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def encode_line(record: dict[str, Any]) -> bytes:
    """One record as one newline-terminated line of strict JSON (ASCII, so no byte of it is a newline)."""
    return (json.dumps({k: _json_value(v) for k, v in record.items()}, allow_nan=False) + "\n").encode()


def decode_line(line: bytes) -> dict[str, Any] | None:
    """The record of one line, or None when it is not a JSON object."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    return {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()}


def _owning_step(record: dict[str, Any] | None) -> int | None:
    """The step a line belongs to for truncation: a step/eval line's step, a header's start_step."""
    if record is None:
        return None
    value = record.get("start_step") if record.get("kind") == "header" else record.get("step")
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STEP else None


def resume_offset(data: bytes, start_step: int) -> int:
    """Byte offset to truncate to before a run starting at start_step appends (see the module docstring)."""
    offset = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        if end < 0:
            return offset  # a torn last line
        owner = _owning_step(decode_line(data[offset:end]))
        if owner is not None and owner >= start_step:
            return offset
        offset = end + 1
    return offset


class MetricsLog:
    """Appends records to one metrics.jsonl; a log made with path None (process != 0) writes nothing."""

    def __init__(self, path: Path | None):
        self.path = path

    @classmethod
    def start(cls, out_dir: str | Path, config: dict[str, Any], start_step: int, enabled: bool) -> MetricsLog:
        """Cut the file back to start_step and append this run's header."""
        if not enabled:
            return cls(None)
        log = cls(Path(out_dir) / FILE_NAME)
        try:
            log.path.parent.mkdir(parents=True, exist_ok=True)
            with open(log.path, "a+b") as file:
                file.seek(0)
                file.truncate(resume_offset(file.read(), start_step))
        except OSError as error:
            log._give_up(error)
        log.append({"kind": "header", "schema": SCHEMA_VERSION,
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "start_step": start_step, "total_steps": config["steps"], "config": config})
        if log.path is not None and os.environ.get(LINK_ENV):
            link_for_launcher(Path(os.environ[LINK_ENV]), log.path.absolute())
        return log

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """The step's line, then an eval line when the step's metrics hold eval/* values."""
        now = time.time()
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        self.append({"kind": "step", "step": step, "timestamp": now}
                    | {k: v for k, v in metrics.items() if k not in evals})
        if evals:
            self.append({"kind": "eval", "step": step, "timestamp": now} | evals)

    def append(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = encode_line(record)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, line)
                while written < len(line):  # a short write: the rest goes right after it
                    written += os.write(fd, line[written:])
            finally:
                os.close(fd)
        except OSError as error:
            self._give_up(error)

    def _give_up(self, error: OSError) -> None:
        print(f"warning: {self.path}: metrics.jsonl no longer written: {error}", file=sys.stderr, flush=True)
        self.path = None


def link_for_launcher(link: Path, target: Path) -> None:
    """Make `link` a symlink to `target`, replacing what was there in one rename."""
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        os.replace(temporary, link)
    except OSError as error:
        print(f"warning: {target}: no link for the launcher at {link}: {error}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class RunMetrics:
    """What a metrics.jsonl holds: the last header, one record per step and per evaluation, in step order."""

    header: dict[str, Any]
    steps: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    skipped_lines: list[int]  # 1-based numbers of complete lines that are not JSON objects

    @property
    def total_steps(self) -> int | None:
        return self.header.get("total_steps")


def parse_metrics(data: bytes) -> RunMetrics:
    """Records of a metrics.jsonl's bytes. An unterminated last line is still being written: left out.
    A step written twice (only by a writer that does not truncate on resume) counts once, the last."""
    header: dict[str, Any] = {}
    by_kind: dict[str, dict[int, dict]] = {"step": {}, "eval": {}}
    skipped = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        record = decode_line(line)
        kind = record.get("kind") if record else None
        if kind == "header":
            header = record
        elif kind in by_kind and _owning_step(record) is not None:
            by_kind[kind][record["step"]] = record
        else:
            skipped.append(number)
    steps, evals = ([d[s] for s in sorted(d)] for d in (by_kind["step"], by_kind["eval"]))
    return RunMetrics(header, steps, evals, skipped)


def read_metrics(path: str | Path) -> RunMetrics:
    return parse_metrics(Path(path).read_bytes())

"""A run's metrics.jsonl read by byte offset (tpuctl.ops.metrics) from real files the real trainer writer
makes: the incremental copy, a file cut back by a resume before or during a read, torn and garbage lines,
the tail read of `status`, and the progress numbers checked by hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tpuctl.console import TpuctlError
from tpuctl.ops import metrics
from tpuctl.ops.metrics import (
    MEAN_OVER,
    LocalCopy,
    MetricsMissing,
    Progress,
    describe,
    fetch,
    format_duration,
    progress_of,
    read_tail,
)
from trainer.metrics_log import FILE_NAME, MetricsLog, parse_metrics

CONFIG = {"steps": 40, "out_dir": "run"}


@dataclass
class LocalFile:
    """The RemoteFile protocol on a real local file; `after_read` runs after each read (a writer racing it)."""

    path: Path
    after_read: Callable[[int], None] | None = None
    reads: list[tuple[int, int]] = field(default_factory=list)

    def size(self) -> int | None:
        return self.path.stat().st_size if self.path.exists() else None

    def read(self, start: int, length: int) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(start)
            data = handle.read(length)
        self.reads.append((start, len(data)))
        if self.after_read is not None:
            self.after_read(len(self.reads))
        return data

    def bytes_read(self) -> int:
        return sum(length for _, length in self.reads)


def write_steps(out_dir: Path, start: int, steps: range, step_s: Callable[[int], float] = lambda s: 1.0 + s,
                total: int = 40) -> Path:
    log = MetricsLog.start(out_dir, {**CONFIG, "steps": total}, start, enabled=True)
    for step in steps:
        log.log(step, {"loss": step / 3, "reward": step / 7, "time/step_s": step_s(step)})
    return out_dir / FILE_NAME


def test_a_second_fetch_reads_only_the_appended_bytes(tmp_path):
    path = write_steps(tmp_path, 0, range(3))
    remote = LocalFile(path)
    first = fetch(remote, b"")
    assert first.data == path.read_bytes() and first.new_bytes == len(first.data) and not first.restarted
    log = MetricsLog(path)
    before = path.stat().st_size
    log.log(3, {"loss": 1.0, "time/step_s": 2.0})
    remote.reads.clear()
    second = fetch(remote, first.data)
    appended = path.stat().st_size - before
    assert second.data == path.read_bytes() and second.new_bytes == appended and not second.restarted
    # The appended bytes, plus the ANCHOR_BYTES before the old end (checked before and after reading the new
    # bytes: a cut in between would be missed otherwise) and before the new end.
    assert remote.bytes_read() == appended + 3 * metrics.ANCHOR_BYTES
    assert [r["step"] for r in parse_metrics(second.data).steps] == [0, 1, 2, 3]


def test_a_torn_last_line_is_copied_and_completed_by_the_next_fetch(tmp_path):
    path = write_steps(tmp_path, 0, range(2))
    line = b'{"kind": "step", "step": 2, "loss": 0.5, "time/step_s": 3.0}\n'
    with open(path, "ab") as handle:
        handle.write(line[:20])
    torn = fetch(LocalFile(path), b"")
    assert [r["step"] for r in parse_metrics(torn.data).steps] == [0, 1]
    with open(path, "ab") as handle:
        handle.write(line[20:])
    whole = fetch(LocalFile(path), torn.data)
    assert whole.new_bytes == len(line) - 20 and not whole.restarted
    assert [r["step"] for r in parse_metrics(whole.data).steps] == [0, 1, 2]


@pytest.mark.parametrize("resumed_steps", [0, 1, 6], ids=["shorter", "shorter-then-header", "longer-again"])
def test_a_file_a_resume_cut_back_is_read_again_from_its_start(tmp_path, resumed_steps):
    path = write_steps(tmp_path, 0, range(5))
    copy = fetch(LocalFile(path), b"").data
    write_steps(tmp_path, 2, range(2, 2 + resumed_steps), step_s=lambda s: 50.0 + s)  # cut back to step 2
    again = fetch(LocalFile(path), copy)
    assert again.restarted and again.data == path.read_bytes() and again.new_bytes == len(again.data)
    run = parse_metrics(again.data)
    assert [r["step"] for r in run.steps] == list(range(2 + resumed_steps))
    assert run.header["start_step"] == 2


def test_a_file_cut_back_while_it_is_read_is_read_again_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "READ_CHUNK", 300)  # several chunks: the resume lands between two of them
    path = write_steps(tmp_path, 0, range(6))

    def resume_once(reads: int) -> None:
        if reads == 2:
            write_steps(tmp_path, 1, range(1, 9), step_s=lambda s: 70.0 + s)

    remote = LocalFile(path, after_read=resume_once)
    fetched = fetch(remote, b"")
    assert fetched.data == path.read_bytes()  # one state of the file, not the start of one and the end of another
    assert [r["time/step_s"] for r in parse_metrics(fetched.data).steps] == [1.0] + [70.0 + s for s in range(1, 9)]


def test_a_file_that_shrinks_on_every_read_is_an_error_not_a_mixed_copy(tmp_path):
    path = write_steps(tmp_path, 0, range(4))

    def shrink(reads: int) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 40] + b"x" * (reads % 7))

    with pytest.raises(TpuctlError, match="rewritten during each of 3 reads"):
        fetch(LocalFile(path, after_read=shrink), b"")


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(MetricsMissing):
        fetch(LocalFile(tmp_path / "none.jsonl"), b"")


def test_the_local_copy_is_kept_only_for_the_file_it_came_from(tmp_path):
    copy = LocalCopy(tmp_path / "report", "train")
    assert copy.load("w0 /a/metrics.jsonl") == b""
    copy.save("w0 /a/metrics.jsonl", b'{"kind": "step", "step": 0}\n')
    assert copy.load("w0 /a/metrics.jsonl") == b'{"kind": "step", "step": 0}\n'
    assert copy.load("w0 /b/metrics.jsonl") == b""
    assert sorted(p.name for p in copy.folder.iterdir()) == [".train.source.json", "train.metrics.jsonl"]
    copy.source_path.write_text("[1, 2")  # damaged: read everything again
    assert copy.load("w0 /a/metrics.jsonl") == b""
    copy.source_path.write_text("[1, 2]")
    assert copy.load("w0 /a/metrics.jsonl") == b""


def test_the_tail_read_of_a_long_run_is_small_and_finds_the_header_at_the_start(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "TAIL_BYTES", 4096)  # a few step lines: the header is far before the window
    path = write_steps(tmp_path, 0, range(300), total=300)
    remote = LocalFile(path)
    run = read_tail(remote)
    assert run.header["total_steps"] == 300 and run.steps[-1]["step"] == 299
    assert len(run.steps) > MEAN_OVER and run.skipped_lines == []  # the line cut by the window is not counted
    size = path.stat().st_size
    assert remote.reads == [(size - 4096, 4096), (0, 4096)] and size > 40_000  # the window, then the first line


def test_the_tail_read_takes_a_resumes_header_when_it_is_in_the_window(tmp_path):
    write_steps(tmp_path, 0, range(5))
    path = write_steps(tmp_path, 3, range(3, 6), total=60)
    run = read_tail(LocalFile(path))
    assert (run.header["start_step"], run.header["total_steps"]) == (3, 60)
    assert [r["step"] for r in run.steps] == [0, 1, 2, 3, 4, 5]


def test_the_tail_read_of_hostile_files(tmp_path):
    assert read_tail(LocalFile(tmp_path / "missing")) is None
    path = tmp_path / FILE_NAME
    path.write_bytes(b"")
    assert read_tail(LocalFile(path)).steps == []
    path.write_bytes(b"\x00garbage\n[1]\n" + b'{"kind": "step", "step": 3, "time/step_s": "NaN"}\n' + b'{"kind": "st')
    run = read_tail(LocalFile(path))
    assert run.header == {} and [r["step"] for r in run.steps] == [3] and run.skipped_lines == [1, 2]
    assert progress_of(run) == Progress(4, None, None, None)


def _run(steps: list[tuple[int, object]], header: dict | None = None) -> object:
    lines = [{"kind": "header", "start_step": 0, "total_steps": 40, **(header or {})}]
    lines += [{"kind": "step", "step": s, "time/step_s": t} for s, t in steps]
    from trainer.metrics_log import encode_line

    return parse_metrics(b"".join(encode_line(line) for line in lines))


def test_progress_by_hand():
    # Step 0 compiles (90 s); the mean is over the last 10 steps, steps 2..11: (3 + ... + 12) / 10 = 7.5.
    run = _run([(0, 90.0)] + [(s, float(s + 1)) for s in range(1, 12)])
    assert progress_of(run) == Progress(12, 40, 7.5, 28 * 7.5)
    # Three steps: step 0 left out, mean of 2 and 3.
    assert progress_of(_run([(0, 90.0), (1, 2.0), (2, 3.0)])) == Progress(3, 40, 2.5, 37 * 2.5)


def test_progress_of_one_step_and_of_none():
    assert progress_of(_run([(0, 12.0)])) == Progress(1, 40, 12.0, 39 * 12.0)  # only the compile step: it counts
    assert progress_of(_run([])) == Progress(0, 40, None, None)
    assert progress_of(parse_metrics(b"")) == Progress(0, None, None, None)


def test_progress_after_a_resume_leaves_out_the_restart_step():
    run = _run([(s, 1.0) for s in range(5)] + [(5, 80.0), (6, 2.0), (7, 4.0)], header={"start_step": 5})
    assert progress_of(run).mean_step_s == pytest.approx((1.0 * 5 + 2.0 + 4.0) / 7)  # steps 0-4, 6, 7


@pytest.mark.parametrize("value", ["NaN", "Infinity", -1.0, True, "3.0", None])
def test_progress_skips_step_times_that_are_no_time(value):
    run = _run([(0, 9.0), (1, 2.0), (2, value), (3, 4.0)])
    assert progress_of(run) == Progress(4, 40, 3.0, 36 * 3.0)


def test_progress_with_hostile_numbers():
    largest = 2**63 - 1  # beyond it, or below 0, a step is a damaged line (trainer.metrics_log)
    assert progress_of(_run([(largest, 1.0)])) == Progress(2**63, 40, 1.0, 0.0)  # past the total: nothing left
    assert progress_of(_run([(0, 5.0), (10**30, 1.0), (-7, 1.0)])) == Progress(1, 40, 5.0, 39 * 5.0)
    assert progress_of(_run([(0, 1.0)], header={"total_steps": 10**400})).eta_s is None  # no float holds it
    assert progress_of(_run([(0, 1e308), (1, 1e308)], header={"total_steps": 10**6})).eta_s is None
    for bad_total in ("40", True, 0, -5, 2.5, None):
        assert progress_of(_run([(0, 1.0)], header={"total_steps": bad_total})).total_steps is None


def test_durations_and_cells_by_hand():
    assert [format_duration(s) for s in (0, 42.4, 59.6, 725, 3600 * 3 + 240, 86400 * 5 + 3 * 3600 + 59)] == [
        "0s", "42s", "1m00s", "12m05s", "3h04m", "5d03h"]
    assert [format_duration(s) for s in (None, math.nan, math.inf, -1, 1e30)] == ["?", "?", "?", "?", ">9999d"]
    assert describe(Progress(12, 40, 7.5, 210.0)) == ("12/40", "7.50", "3m30s")
    assert describe(Progress(0, None, None, None)) == ("0/?", "?", "?")
    assert describe(None) == ("", "", "")
    assert Progress(50, 40, 1.0, 0.0).fraction == 1.0 and Progress(1, None, None, None).fraction is None

"""metrics.jsonl written and read for real on disk: the header, step and eval lines, resume truncation,
torn and damaged lines, non-finite numbers, a disabled writer, a write that fails."""

import json
import math

from trainer.metrics_log import FILE_NAME, LINK_ENV, MetricsLog, parse_metrics, read_metrics, resume_offset

CONFIG = {"steps": 5, "out_dir": "run", "rollout": {"backend": "jax"}}


def _metrics(step: int, run: str = "a") -> dict:
    """Distinct values per step and per writer, so a line from the wrong run cannot pass for another."""
    return {"loss": 0.25 * step + (0.5 if run == "b" else 0.0), "reward": step / 7, "time/step_s": 1.5 + step}


def _write_run(out_dir, start: int, steps: range, run: str = "a", eval_at: tuple[int, ...] = ()) -> MetricsLog:
    log = MetricsLog.start(out_dir, CONFIG, start, enabled=True)
    for step in steps:
        extra = {"eval/pass@1": step / 10, "eval/num_problems": 8.0} if step in eval_at else {}
        log.log(step, _metrics(step, run) | extra)
    return log


def _lines(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / FILE_NAME).read_text().splitlines()]


def test_a_fresh_run_writes_its_header_then_a_line_per_step_and_per_evaluation(tmp_path):
    _write_run(tmp_path, 0, range(3), eval_at=(1,))
    lines = _lines(tmp_path)
    assert [(line["kind"], line.get("step")) for line in lines] == [
        ("header", None), ("step", 0), ("step", 1), ("eval", 1), ("step", 2)]
    header = lines[0]
    assert header["schema"] == 1 and header["start_step"] == 0 and header["total_steps"] == 5
    assert header["config"] == CONFIG and header["started_at"].endswith("Z")
    for line in lines[1:]:
        assert isinstance(line["timestamp"], float)
    assert {k: v for k, v in lines[2].items() if k not in ("kind", "step", "timestamp")} == _metrics(1)
    assert lines[3]["eval/pass@1"] == 0.1 and "eval/pass@1" not in lines[2] and "reward" not in lines[3]

    run = read_metrics(tmp_path / FILE_NAME)
    assert run.header == header and run.total_steps == 5 and run.skipped_lines == []
    assert [r["step"] for r in run.steps] == [0, 1, 2] and [r["step"] for r in run.evals] == [1]
    assert [r["reward"] for r in run.steps] == [0.0, 1 / 7, 2 / 7]  # exact floats, not the step line's rounding


def test_resume_truncates_the_steps_after_the_checkpoint_and_keeps_the_bytes_before_it(tmp_path):
    _write_run(tmp_path, 0, range(5), eval_at=(2, 3))  # interrupted after step 4; the checkpoint holds 3 steps
    before = (tmp_path / FILE_NAME).read_bytes()
    _write_run(tmp_path, 3, range(3, 5), run="b")
    after = (tmp_path / FILE_NAME).read_bytes()

    cut = before.index(b'"step": 3')
    cut = before.rindex(b"\n", 0, cut) + 1
    assert after[:cut] == before[:cut]  # nothing before the checkpoint is rewritten
    lines = _lines(tmp_path)
    assert [(line["kind"], line.get("step", line.get("start_step"))) for line in lines] == [
        ("header", 0), ("step", 0), ("step", 1), ("step", 2), ("eval", 2), ("header", 3), ("step", 3), ("step", 4)]
    run = read_metrics(tmp_path / FILE_NAME)
    assert [r["loss"] for r in run.steps] == [0.0, 0.25, 0.5, 0.75 + 0.5, 1.0 + 0.5]  # 3 and 4 from the rerun
    assert [r["step"] for r in run.evals] == [2]  # step 3's evaluation belonged to the discarded attempt
    assert run.header["start_step"] == 3


def test_resuming_twice_from_the_same_checkpoint_keeps_one_header_for_it(tmp_path):
    _write_run(tmp_path, 0, range(3))
    _write_run(tmp_path, 2, range(2, 4), run="b")  # crashes again before the next checkpoint
    _write_run(tmp_path, 2, range(2, 5), run="b")
    lines = _lines(tmp_path)
    assert [line.get("start_step") for line in lines if line["kind"] == "header"] == [0, 2]
    assert [line["step"] for line in lines if line["kind"] == "step"] == [0, 1, 2, 3, 4]


def test_a_fresh_start_over_an_old_run_folder_begins_an_empty_file(tmp_path):
    _write_run(tmp_path, 0, range(4))
    _write_run(tmp_path, 0, range(1), run="b")
    lines = _lines(tmp_path)
    assert [line["kind"] for line in lines] == ["header", "step"] and lines[1]["loss"] == 0.5


def test_a_torn_last_line_is_cut_on_resume_and_left_out_by_the_reader(tmp_path):
    _write_run(tmp_path, 0, range(2))
    path = tmp_path / FILE_NAME
    whole = path.read_bytes()
    with open(path, "ab") as file:
        file.write(b'{"kind": "step", "step": 2, "loss": 0.')  # a crash in the middle of a write
    assert [r["step"] for r in read_metrics(path).steps] == [0, 1] and read_metrics(path).skipped_lines == []

    _write_run(tmp_path, 2, range(2, 3), run="b")
    data = path.read_bytes()
    assert data.startswith(whole) and b"0.{" not in data and data.endswith(b"\n")
    assert [r["step"] for r in read_metrics(path).steps] == [0, 1, 2]


def test_damaged_lines_are_kept_by_the_writer_and_skipped_with_their_numbers_by_the_reader(tmp_path):
    _write_run(tmp_path, 0, range(2))
    path = tmp_path / FILE_NAME
    with open(path, "ab") as file:
        file.write(b"\x00\x00garbage\n[1, 2]\n")
    _write_run(tmp_path, 2, range(2, 3))
    assert b"\x00\x00garbage\n[1, 2]\n" in path.read_bytes()
    run = read_metrics(path)
    assert run.skipped_lines == [4, 5] and [r["step"] for r in run.steps] == [0, 1, 2]


def test_nan_and_infinity_are_strict_json_and_read_back_as_floats(tmp_path):
    log = MetricsLog.start(tmp_path, CONFIG, 0, enabled=True)
    log.log(0, {"loss": math.nan, "grad_norm": math.inf, "kl": -math.inf, "reward": 0.5})
    text = (tmp_path / FILE_NAME).read_text()
    step_line = json.loads(text.splitlines()[1], parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert step_line["loss"] == "NaN" and step_line["grad_norm"] == "Infinity" and step_line["kl"] == "-Infinity"
    (record,) = read_metrics(tmp_path / FILE_NAME).steps
    assert math.isnan(record["loss"]) and record["grad_norm"] == math.inf and record["kl"] == -math.inf
    assert record["reward"] == 0.5


def test_a_writer_that_is_not_process_0_writes_nothing(tmp_path):
    log = MetricsLog.start(tmp_path / "run", CONFIG, 0, enabled=False)
    log.log(0, _metrics(0))
    assert not (tmp_path / "run").exists()


def test_a_failing_write_warns_once_and_the_run_goes_on(tmp_path, capsys):
    log = _write_run(tmp_path, 0, range(1))
    (tmp_path / FILE_NAME).unlink()
    (tmp_path / FILE_NAME).mkdir()  # the next open for writing fails with EISDIR
    log.log(1, _metrics(1))
    log.log(2, _metrics(2))
    err = capsys.readouterr().err
    assert err.count("metrics.jsonl no longer written") == 1 and "Is a directory" in err


def test_an_out_dir_that_cannot_be_created_warns_and_the_run_goes_on(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    log = MetricsLog.start(tmp_path / "file" / "run", CONFIG, 0, enabled=True)
    log.log(0, _metrics(0))
    assert capsys.readouterr().err.count("metrics.jsonl no longer written") == 1


def test_resume_offset_by_hand():
    header = b'{"kind": "header", "start_step": 0}\n'
    step = [f'{{"kind": "step", "step": {s}}}\n'.encode() for s in range(3)]
    data = header + b"".join(step)
    assert resume_offset(data, 0) == 0
    assert resume_offset(data, 2) == len(header) + len(step[0]) + len(step[1])
    assert resume_offset(data, 9) == len(data)
    assert resume_offset(data + b'{"kind": "st', 9) == len(data)
    assert resume_offset(b"", 3) == 0


def test_the_reader_keeps_the_last_of_a_step_written_twice():
    data = b'{"kind": "step", "step": 0, "loss": 1.0}\n{"kind": "step", "step": 0, "loss": 2.0}\n'
    assert [r["loss"] for r in parse_metrics(data).steps] == [2.0]


def test_a_launcher_that_asks_for_a_link_gets_one_to_the_file(tmp_path, monkeypatch):
    link = tmp_path / "logs" / "train_20250101T000000.000Z.metrics.jsonl"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "an-older-run.jsonl")  # a relaunch under the same files: replaced, not refused
    monkeypatch.setenv(LINK_ENV, str(link))
    monkeypatch.chdir(tmp_path)
    _write_run("run", 0, range(2))  # a relative out_dir: the link is absolute all the same
    assert link.is_symlink() and link.readlink() == tmp_path / "run" / FILE_NAME
    assert [r["step"] for r in read_metrics(link).steps] == [0, 1]


def test_no_link_without_the_variable_or_when_not_process_0_and_a_link_that_fails_only_warns(tmp_path, monkeypatch,
                                                                                               capsys):
    monkeypatch.delenv(LINK_ENV, raising=False)
    _write_run(tmp_path / "a", 0, range(1))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", FILE_NAME]
    monkeypatch.setenv(LINK_ENV, str(tmp_path / "link"))
    MetricsLog.start(tmp_path / "b", CONFIG, 0, enabled=False)
    assert not (tmp_path / "link").exists() and not (tmp_path / "link").is_symlink()
    monkeypatch.setenv(LINK_ENV, str(tmp_path / "no-such-folder" / "link"))
    log = _write_run(tmp_path / "c", 0, range(1))
    assert "metrics.jsonl: no link" in capsys.readouterr().err
    log.log(1, _metrics(1))
    assert [r["step"] for r in read_metrics(tmp_path / "c" / FILE_NAME).steps] == [0, 1]


def test_a_step_that_is_no_step_index_is_an_unreadable_line():
    """A damaged number (beyond int64, which numpy and the report's axes take, or below 0) is no step."""
    lines = [b'{"kind": "step", "step": 0, "loss": 1.0}', b'{"kind": "step", "step": 1000000000000000000000000000000}',
             b'{"kind": "step", "step": -3}', b'{"kind": "eval", "step": 9223372036854775808}',
             b'{"kind": "step", "step": 9223372036854775807}', b'{"kind": "step", "step": true}']
    run = parse_metrics(b"\n".join(lines) + b"\n")
    assert [r["step"] for r in run.steps] == [0, 2**63 - 1] and run.skipped_lines == [2, 3, 4, 6]

"""The report: metrics.jsonl files written by the real writer -> PNGs and one offline HTML page; the panels
present, the 1-step and 300-step cases, several runs, smoothing, hostile labels, `trainer report`, and
that rendering needs neither JAX nor PyYAML."""

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer.helpers import ALWAYS_PANELS, check_offline_page, subprocess_env
from trainer.metrics_log import FILE_NAME, MetricsLog, read_metrics
from trainer.report import PANELS, ReportError, check_smooth, ema, panel_figure, render_report

WITH_KL = ALWAYS_PANELS[:4] + ["kl"] + ALWAYS_PANELS[4:]
EVERY_PANEL = [panel.slug for panel in PANELS]


def synthetic_run(out_dir, steps: int, *, kl=False, mismatch=False, eval_every=0, seed=0):
    """A run's metrics.jsonl through the real writer: reward rising with noise, the metrics the loop logs."""
    rng = np.random.default_rng(seed)
    log = MetricsLog.start(out_dir, {"steps": steps, "model_path": "tiny-random", "rollout": {"backend": "jax"}},
                           0, enabled=True)
    for step in range(steps):
        reward = min(1.0, step / max(steps, 1) + float(rng.normal(0, 0.05)))
        metrics = {"loss": 0.0, "entropy": 6.2 - step / 100, "grad_norm": 0.3 + float(rng.random()),
                   "learning_rate": 1e-2, "reward": reward, "reward_std": 0.1, "rewards/correctness/mean": reward,
                   "rewards/format/mean": 0.5, "completions/mean_length": 5.0, "completions/min_length": 2.0,
                   "completions/max_length": 6.0, "completions/clipped_ratio": 0.25,
                   "throughput/completion_tokens_per_s": 300.0, "time/rollout_s": 0.1, "time/update_s": 0.2,
                   "time/weight_push_s": 0.01, "time/step_s": 0.31}
        if kl:
            metrics["kl"] = step / 1000
        if mismatch:
            metrics |= {"rollout/logprob_mismatch_mean": 0.01, "rollout/logprob_mismatch_max": 0.2}
        if eval_every and (step + 1) % eval_every == 0:
            metrics |= {"eval/pass@1": reward, "eval/num_problems": 16.0}
        log.log(step, metrics)
    return read_metrics(out_dir / FILE_NAME)


def coloured_pixels(png: bytes, rgb: tuple[int, int, int]) -> int:
    """Pixels within a small distance of one colour (matplotlib's C0, C1, ...)."""
    import matplotlib.image

    pixels = (matplotlib.image.imread(io.BytesIO(png))[..., :3] * 255).astype(int)
    return int((np.abs(pixels - np.array(rgb)).sum(axis=-1) < 40).sum())


C0 = (31, 119, 180)


def test_ema_by_hand():
    assert ema([1.0, 3.0, math.nan, 5.0], 0.5) == pytest.approx([1.0, 2.0, math.nan, 3.5], nan_ok=True)
    assert ema([2.0, 4.0], 0.0) == [2.0, 4.0]
    assert ema([math.nan, 4.0, 0.0], 0.75) == pytest.approx([math.nan, 4.0, 3.0], nan_ok=True)


def test_a_300_step_run_with_every_metric_draws_every_panel(tmp_path):
    run = synthetic_run(tmp_path / "run", 300, kl=True, mismatch=True, eval_every=25)
    page = render_report([("run", run)], tmp_path / "report", smooth=0.9)
    text = check_offline_page(page, EVERY_PANEL)
    assert "EMA smoothing 0.9" in text and "<td>300 (last step 299)</td>" in text


def test_panels_without_their_metrics_are_left_out_and_a_1_step_run_shows_its_point(tmp_path):
    run = synthetic_run(tmp_path / "run", 1)
    page = render_report([("smoke", run)], tmp_path / "report")
    check_offline_page(page, ALWAYS_PANELS)
    # One step, no line to draw between points: the marker is what shows. Entropy is drawn in C0 alone.
    assert coloured_pixels((tmp_path / "report" / "entropy.png").read_bytes(), C0) > 20


@pytest.mark.parametrize("steps", [1, 2])
def test_the_step_axis_has_whole_steps_only_even_for_a_1_step_smoke(tmp_path, steps):
    """matplotlib spans one point by +-0.05: its ticks were -0.045 ... 0.045, steps that cannot be."""
    run = synthetic_run(tmp_path / "run", steps)
    for panel in PANELS:
        figure = panel_figure(panel, [("smoke", run)], 0.0)
        if figure is not None:
            ticks = [t for t in figure.axes[0].get_xticks() if figure.axes[0].get_xlim()[0] <= t <= figure.axes[0].get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (panel.slug, ticks)


def test_a_panel_left_out_on_a_second_render_loses_its_old_png(tmp_path):
    render_report([("a", synthetic_run(tmp_path / "a", 3, kl=True))], tmp_path / "report")
    assert (tmp_path / "report" / "kl.png").exists()
    page = render_report([("b", synthetic_run(tmp_path / "b", 3))], tmp_path / "report")
    check_offline_page(page, ALWAYS_PANELS)


def test_smoothing_draws_the_average_over_the_raw_points(tmp_path):
    run = synthetic_run(tmp_path / "run", 50, seed=3, eval_every=10)
    raw = render_report([("run", run)], tmp_path / "raw")
    smooth = render_report([("run", run)], tmp_path / "smooth", smooth=0.9)
    grad_raw = (raw.parent / "grad_norm.png").read_bytes()
    grad_smooth = (smooth.parent / "grad_norm.png").read_bytes()
    # The raw points stay (faint) and the smoothed line is added: more C0-ish pixels than the raw line alone,
    # but the saturated C0 line itself is the EMA, much flatter than the noisy raw one.
    assert grad_raw != grad_smooth
    assert coloured_pixels(grad_smooth, C0) < coloured_pixels(grad_raw, C0)
    # Five evaluations are points to read, not a trend to smooth: the eval panel is drawn the same.
    assert (raw.parent / "eval_pass_at_1.png").read_bytes() == (smooth.parent / "eval_pass_at_1.png").read_bytes()


def test_several_runs_overlay_with_escaped_labels(tmp_path):
    hostile = '<script>alert("x")</script> & $(rm -rf ~)'
    runs = [("baseline", synthetic_run(tmp_path / "a", 20)), (hostile, synthetic_run(tmp_path / "b", 8, kl=True))]
    page = render_report(runs, tmp_path / "report", smooth=0.5)
    text = check_offline_page(page, WITH_KL)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; $(rm -rf ~)" in text
    assert "<td>baseline</td>" in text and "<td>20 (last step 19)</td>" in text and "<td>8 (last step 7)</td>" in text
    # Two runs on one axis: run 0 in C0, run 1 in C1.
    assert coloured_pixels((tmp_path / "report" / "entropy.png").read_bytes(), (255, 127, 14)) > 20


def test_labels_are_plain_text_in_the_legend(tmp_path):
    """A run folder may be named anything: `$` is not mathtext (an unbalanced formula would end the render)
    and a leading `_` does not hide the run from the legend (matplotlib's rule for private artists)."""
    runs = [("_hidden", synthetic_run(tmp_path / "a", 3)), (r"cost $\frac{$ 2", synthetic_run(tmp_path / "b", 3))]
    figure = panel_figure(PANELS[4], runs, smooth=0.0)
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == [
        "_hidden: entropy", r"cost \$\frac{\$ 2: entropy"]
    check_offline_page(render_report(runs, tmp_path / "report"), ALWAYS_PANELS)


@pytest.mark.parametrize("bad", [1.0, -0.1, math.nan, math.inf, True, "0.5"])
def test_smooth_outside_0_1_is_refused(bad):
    with pytest.raises(ReportError, match=r"--smooth: expected a number in \[0, 1\) \(0: off\), received "):
        check_smooth(bad)


def test_no_runs_is_refused(tmp_path):
    with pytest.raises(ReportError, match="runs: expected at least one"):
        render_report([], tmp_path / "report")


def test_a_run_with_no_step_yet_gives_a_page_without_panels(tmp_path):
    MetricsLog.start(tmp_path / "run", {"steps": 10}, 0, enabled=True)
    page = render_report([("run", read_metrics(tmp_path / "run" / FILE_NAME))], tmp_path / "report")
    assert "No steps logged yet." in check_offline_page(page, [])


RENDER_WITHOUT_JAX = """
import json, sys
import trainer.report
before = sorted(sys.modules)
from trainer.metrics_log import read_metrics
trainer.report.render_report([("run", read_metrics(sys.argv[1]))], sys.argv[2])
print(json.dumps({"before": before, "after": sorted(sys.modules)}))
"""


def test_rendering_imports_neither_jax_nor_yaml_and_matplotlib_only_when_drawing(tmp_path):
    synthetic_run(tmp_path / "run", 2)
    out = subprocess.run([sys.executable, "-c", RENDER_WITHOUT_JAX, str(tmp_path / "run" / FILE_NAME),
                          str(tmp_path / "report")], capture_output=True, text=True, check=True, env=subprocess_env())
    modules = json.loads(out.stdout)
    assert "matplotlib" not in modules["before"] and "matplotlib" in modules["after"]
    assert not {"jax", "jaxlib", "flax", "yaml"} & {name.split(".")[0] for name in modules["after"]}
    assert (tmp_path / "report" / "report.html").exists()


def _trainer(*args, cwd):
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def test_trainer_report_renders_run_folders_and_files(tmp_path):
    synthetic_run(tmp_path / "a", 4)
    synthetic_run(tmp_path / "b", 4, kl=True)
    one = _trainer("report", "a", "--smooth", "0.5", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "a/report/report.html"
    check_offline_page(tmp_path / "a" / "report" / "report.html", ALWAYS_PANELS)

    two = _trainer("report", "a", "b/metrics.jsonl", "--out", "cmp", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    page = check_offline_page(tmp_path / "cmp" / "report.html", WITH_KL)
    assert "<td>a</td>" in page and "<td>b</td>" in page


@pytest.mark.parametrize(("args", "message"), [
    (["report", "missing"], "report: RUN_DIR: expected a run folder holding metrics.jsonl (or the file), "
                            "received 'missing'"),
    (["report", "a", "--smooth", "1e3"], "report: --smooth: expected a number in [0, 1) (0: off), received 1000.0"),
    (["report", "a", "a"], "report: --out: expected a folder for the report of 2 runs, received none"),
])
def test_trainer_report_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    synthetic_run(tmp_path / "a", 2)
    result = _trainer(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == message and not (tmp_path / "a" / "report").exists()


def test_trainer_report_warns_about_unreadable_lines(tmp_path):
    synthetic_run(tmp_path / "a", 2)
    with open(tmp_path / "a" / FILE_NAME, "ab") as file:
        file.write(b"not json\n")
    result = _trainer("report", "a", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.strip() == "warning: a: skipped unreadable lines [4] of metrics.jsonl"


def test_a_hostile_file_still_gives_a_page(tmp_path):
    """Garbage, a torn last line, NaN and infinite values, and the largest step index the file allows."""
    log = MetricsLog.start(tmp_path / "run", {"steps": 40}, 0, enabled=True)
    log.log(0, {"reward": 0.1, "reward_std": 0.05, "entropy": 1.0, "time/step_s": 9.0})
    log.log(1, {"reward": math.nan, "reward_std": math.inf, "entropy": -math.inf, "time/step_s": math.nan})
    log.log(2**63 - 1, {"reward": 0.3, "reward_std": 0.1, "entropy": 0.8, "time/step_s": 1.0})
    with open(tmp_path / "run" / FILE_NAME, "ab") as file:
        file.write(b'\x00garbage\n[1]\n{"kind": "step", "step": 100000000000000000000000, "reward": 1}\n{"kind": "st')
    run = read_metrics(tmp_path / "run" / FILE_NAME)
    page = check_offline_page(render_report([("run", run)], tmp_path / "report"), ["reward", "entropy", "step_time"])
    assert "<td>5, 6, 7</td>" in page  # the unreadable lines, by number

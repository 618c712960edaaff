"""metrics.jsonl -> one self-contained HTML page plus a PNG per panel, for one run or several overlaid.

matplotlib's object API on the Agg canvas (no pyplot, no display, no server); the page embeds every
plot as a base64 PNG and loads nothing else: no script, no stylesheet or font from the network.
matplotlib is imported only while drawing and nothing here imports JAX or PyYAML, so the laptop's
`tpuctl report` can call `render_report` with the `report` extra alone.

A panel is drawn when at least one run has one of its metrics and left out otherwise (KL without
beta > 0, the log-prob mismatch without rollout log-probs, eval without eval.every_steps). With
`smooth` > 0 an exponential moving average (the first value, then smooth x previous + (1 - smooth)
x value) is drawn over the raw points, which stay visible, faint; eval pass@1, one point every
eval.every_steps, is never smoothed. Up to 60 points per line get markers, so a 1-step run shows a
dot rather than empty axes. Several runs share each panel's axes: one colour per run and one line
style per metric (a single run gets a colour per metric too). Step time is on a log scale: step 0
includes compilation, often 10-100x the steps after it.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import html
import io
import math
from pathlib import Path

from trainer.metrics_log import RunMetrics

HTML_NAME = "report.html"
MARKERS_UP_TO = 60  # points per series; beyond this a marker per point hides the line
LINE_STYLES = ("-", "--", ":", "-.")


@dataclasses.dataclass(frozen=True)
class Series:
    key: str  # a metric name; one `*` matches the varying part (rewards/*/mean)
    label: str  # `{}` is replaced by what `*` matched
    band: tuple[str, ...] = ()  # ("std", KEY): value +- KEY; ("range", LOW, HIGH): from LOW to HIGH
    source: str = "step"  # step | eval: which lines of the file hold it


@dataclasses.dataclass(frozen=True)
class Panel:
    slug: str  # the PNG's file name
    title: str
    ylabel: str
    series: tuple[Series, ...]
    log_y: bool = False


PANELS = (
    Panel("reward", "Reward", "reward", (
        Series("reward", "mean ± std", band=("std", "reward_std")), Series("rewards/*/mean", "{}"))),
    Panel("eval_pass_at_1", "Eval pass@1 (greedy)", "pass@1", (Series("eval/pass@1", "pass@1", source="eval"),)),
    Panel("completion_length", "Completion length", "tokens", (
        Series("completions/mean_length", "mean (band: min to max)",
               band=("range", "completions/min_length", "completions/max_length")),)),
    Panel("clipped_ratio", "Completions clipped at the length limit", "fraction",
          (Series("completions/clipped_ratio", "clipped ratio"),)),
    Panel("entropy", "Entropy", "nats per token", (Series("entropy", "entropy"),)),
    Panel("kl", "KL to the reference model", "KL", (Series("kl", "kl"),)),
    Panel("logprob_mismatch", "Rollout / trainer log-prob mismatch", "|log p engine - log p trainer|", (
        Series("rollout/logprob_mismatch_mean", "mean"), Series("rollout/logprob_mismatch_max", "max"))),
    Panel("grad_norm", "Gradient norm", "global norm", (Series("grad_norm", "grad norm"),)),
    Panel("learning_rate", "Learning rate", "learning rate", (Series("learning_rate", "learning rate"),)),
    Panel("tokens_per_s", "Throughput", "completion tokens / s",
          (Series("throughput/completion_tokens_per_s", "tokens/s"),)),
    Panel("step_time", "Step time", "seconds", (
        Series("time/step_s", "step"), Series("time/rollout_s", "rollout"), Series("time/update_s", "update"),
        Series("time/weight_push_s", "weight push")), log_y=True),  # step 0 compiles: 10-100x the others
)


class ReportError(ValueError):
    """Input the report cannot be drawn from; the message names the value and what was expected."""


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average starting at the first finite value; a non-finite value stays a gap."""
    smoothed, last = [], None
    for value in values:
        if not math.isfinite(value):
            smoothed.append(math.nan)
            continue
        last = value if last is None else weight * last + (1.0 - weight) * value
        smoothed.append(last)
    return smoothed


def _records(run: RunMetrics, source: str) -> list[dict]:
    return run.evals if source == "eval" else run.steps


def _as_float(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def column(run: RunMetrics, key: str, source: str = "step") -> tuple[list[int], list[float]]:
    """Steps and values of one metric, over the lines that have it; non-numbers become NaN (a gap)."""
    rows = [r for r in _records(run, source) if key in r]
    return [r["step"] for r in rows], [_as_float(r[key]) for r in rows]


@dataclasses.dataclass(frozen=True)
class ResolvedSeries:
    key: str
    label: str
    spec: Series


def resolve(series: Series, runs: list[RunMetrics]) -> list[ResolvedSeries]:
    """The concrete metrics a series names in these runs (a `*` pattern can name several, sorted)."""
    if "*" not in series.key:
        present = any(series.key in r for run in runs for r in _records(run, series.source))
        return [ResolvedSeries(series.key, series.label, series)] if present else []
    keys = sorted({k for run in runs for r in _records(run, series.source) for k in r
                   if fnmatch.fnmatchcase(k, series.key)})
    prefix, suffix = series.key.split("*", 1)
    return [ResolvedSeries(k, series.label.format(k[len(prefix):len(k) - len(suffix)]), series) for k in keys]


def panel_series(panel: Panel, runs: list[RunMetrics]) -> list[ResolvedSeries]:
    return [resolved for series in panel.series for resolved in resolve(series, runs)]


def _band(run: RunMetrics, resolved: ResolvedSeries, steps: list[int], values: list[float]):
    """Lower and upper edges of the series' band at its steps, or None."""
    band = resolved.spec.band
    if not band:
        return None
    records = {r["step"]: r for r in _records(run, resolved.spec.source)}
    if band[0] == "std":
        spread = [_as_float(records[s].get(band[1])) for s in steps]
        return [v - d for v, d in zip(values, spread, strict=True)], [v + d for v, d in zip(values, spread, strict=True)]
    return [_as_float(records[s].get(band[1])) for s in steps], [_as_float(records[s].get(band[2])) for s in steps]


def _draw_series(ax, steps, values, band, color, style, smooth: float, sparse: bool):
    """Draw one run's series; returns the line its legend entry shows."""
    marker = {"marker": "o", "markersize": 5 if len(steps) == 1 else 3} if sparse or len(steps) <= MARKERS_UP_TO else {}
    if band is not None and len(steps) > 1:
        ax.fill_between(steps, band[0], band[1], color=color, alpha=0.15, linewidth=0)
    elif band is not None:  # one point: the band as an error bar
        below, above = max(values[0] - band[0][0], 0.0), max(band[1][0] - values[0], 0.0)
        ax.errorbar(steps, values, yerr=[[below], [above]], color=color,
                    alpha=0.5, capsize=4, linestyle="none")
    if smooth > 0:
        ax.plot(steps, values, color=color, linestyle=style, linewidth=0.8, alpha=0.35, **marker)
        return ax.plot(steps, ema(values, smooth), color=color, linestyle=style, linewidth=1.8)[0]
    return ax.plot(steps, values, color=color, linestyle=style, linewidth=1.5, **marker)[0]


def panel_figure(panel: Panel, runs: list[tuple[str, RunMetrics]], smooth: float):
    """The panel as a matplotlib Figure, or None when no run has any of its metrics."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    resolved = panel_series(panel, [run for _, run in runs])
    if not resolved:
        return None
    figure = Figure(figsize=(6.4, 3.4), dpi=100)
    ax = figure.add_subplot()
    legend: list[tuple[object, str]] = []
    for run_index, (run_label, run) in enumerate(runs):
        for series_index, series in enumerate(resolved):
            steps, values = column(run, series.key, series.spec.source)
            if not steps:
                continue
            color = f"C{series_index}" if len(runs) == 1 else f"C{run_index}"
            style = LINE_STYLES[series_index % len(LINE_STYLES)]
            label = series.label if len(runs) == 1 else f"{run_label}: {series.label}"
            sparse = series.spec.source == "eval"  # a point every eval.every_steps: marked, never smoothed
            line = _draw_series(ax, steps, values, _band(run, series, steps, values), color, style,
                                0.0 if sparse else smooth, sparse)
            legend.append((line, label.replace("$", r"\$")))  # a run's name is text, never mathtext
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    low, high = ax.get_xlim()
    if high - low < 1:  # one step: matplotlib spans it by +-0.05 and ticks it in fractions of a step
        step = round((low + high) / 2)
        ax.set_xlim(step - 0.5, step + 0.5)
        ax.set_xticks([step])
    ax.grid(alpha=0.3)
    if panel.log_y:
        ax.set_yscale("log")
    if len(resolved) > 1 or len(runs) > 1 or resolved[0].spec.band:
        # Handles and labels given explicitly: a label starting with "_" would otherwise be left out.
        ax.legend([line for line, _ in legend], [text for _, text in legend], fontsize="small")
    figure.tight_layout()
    return figure


def draw_panel(panel: Panel, runs: list[tuple[str, RunMetrics]], smooth: float) -> bytes | None:
    """The panel as PNG bytes, or None when no run has any of its metrics."""
    figure = panel_figure(panel, runs, smooth)
    if figure is None:
        return None
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()


def check_smooth(smooth: float) -> float:
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0.0 <= smooth < 1.0:
        raise ReportError(f"--smooth: expected a number in [0, 1) (0: off), received {smooth!r}")
    return float(smooth)


def render_report(runs: list[tuple[str, RunMetrics]], out_dir: str | Path, smooth: float = 0.0) -> Path:
    """Write out_dir/<panel>.png for each panel with data and out_dir/report.html embedding them all;
    a PNG of a panel left out this time is removed, so the folder matches the page. Returns the page."""
    smooth = check_smooth(smooth)
    if not runs:
        raise ReportError("runs: expected at least one (label, metrics), received none")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for panel in PANELS:
        png = draw_panel(panel, runs, smooth)
        path = out / f"{panel.slug}.png"
        if png is None:
            path.unlink(missing_ok=True)
            continue
        path.write_bytes(png)
        figures.append((panel, png))
    page = out / HTML_NAME
    page.write_text(report_html(runs, figures, smooth), encoding="utf-8")
    return page


def _run_row(label: str, run: RunMetrics) -> str:
    config = run.header.get("config") or {}
    last = run.steps[-1]["step"] if run.steps else None
    cells = [label, f"{len(run.steps)}" + (f" (last step {last})" if last is not None else ""),
             str(run.total_steps if run.total_steps is not None else "?"), str(run.header.get("started_at", "?")),
             str(config.get("model_path", "?")), str((config.get("rollout") or {}).get("backend", "?")),
             ", ".join(str(n) for n in run.skipped_lines) or "none"]
    return "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"


STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.9em}
.panels{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:.8em;color:#666}
img{max-width:100%;height:auto}"""


def report_html(runs: list[tuple[str, RunMetrics]], figures: list[tuple[Panel, bytes]], smooth: float) -> str:
    """The page: a table of the runs, then every panel as an embedded PNG; every run-supplied text is escaped."""
    title = "Run report: " + ", ".join(label for label, _ in runs)
    header = ("<tr><th>run</th><th>steps logged</th><th>total steps</th><th>started (UTC)</th><th>model</th>"
              "<th>rollout backend</th><th>unreadable lines</th></tr>")
    rows = "".join(_run_row(label, run) for label, run in runs)
    smoothing = (f"EMA smoothing {smooth:g} drawn over the raw points (faint)." if smooth > 0
                 else "Raw values, no smoothing.")
    panels = "".join(
        f'<figure><img alt="{html.escape(panel.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{panel.slug}.png</figcaption></figure>'
        for panel, png in figures) or "<p>No steps logged yet.</p>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n<table>{header}{rows}</table>\n"
            f"<p>{smoothing}</p>\n<div class=\"panels\">{panels}</div>\n</body></html>\n")

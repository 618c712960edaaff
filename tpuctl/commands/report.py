"""`tpuctl report`: plots of one or more runs from their metrics.jsonl on worker 0 (tpuctl.ops.report),
drawn by trainer.report: one self-contained HTML page and a PNG per panel.

trainer.report and trainer.metrics_log import neither JAX nor PyYAML, and this package ships them, so a
laptop needs only the `report` extra (matplotlib); both are imported once the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tpuctl.commands.common import DEFAULT_RUN, fail_unless, open_session, workers_of
from tpuctl.console import BadInput, TpuctlError, console, err_console, shown

NamesOpt = Annotated[list[str] | None, typer.Option(
    "--name", help="Run name; repeat it to overlay several runs on the same axes.")]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", help="Folder of the report (default: reports/NAME, or reports/A+B for several runs).")]
OpenOpt = Annotated[bool, typer.Option("--open", help="Open the page in a web browser.")]
SmoothOpt = Annotated[float, typer.Option(
    "--smooth", help="EMA weight in [0, 1) drawn over the raw points (0: off).")]


def report(ctx: typer.Context, name: NamesOpt = None, out: OutOpt = None, open_page: OpenOpt = False,
           smooth: SmoothOpt = 0.0) -> None:
    """Fetch the runs' metrics.jsonl from worker 0 (only the bytes new since the last report) and draw
    reward, eval, lengths, entropy, KL, grad norm, learning rate, throughput and step time.

    A run that cannot be fetched is reported and nothing is drawn (exit 1); the others' copies are kept."""
    from tpuctl.commands.views import show_fetched
    from tpuctl.ops.report import fetch_runs
    from tpuctl.ops.runs import check_run_name

    names = [check_run_name(n) for n in name or [DEFAULT_RUN]]
    if len(set(names)) < len(names):
        raise BadInput(f"bad --name: expected each run once, received {', '.join(names)}")
    render, parse = _renderer(smooth)
    folder = out if out is not None else Path("reports") / "+".join(names)
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"bad --out {str(folder)!r}: expected a folder (or none yet), found a file")
    target, workers = workers_of(ctx, "0")
    with open_session(target) as session:
        fetched = fetch_runs(session, target.remote_repo, workers[0], names, folder)
    fail_unless(show_fetched(fetched))  # a run missing: no page that silently leaves it out
    page = render([(run.name, parse(run.fetched.data)) for run in fetched.runs], folder, smooth)
    console.out(f"report: {page}", highlight=False)
    if open_page:
        import webbrowser

        if not webbrowser.open(page.resolve().as_uri()):
            err_console.print(f"no web browser found: open {shown(str(page))} yourself", highlight=False)


def _renderer(smooth: float):
    """trainer.report's render_report and parse_metrics, once --smooth and matplotlib are checked."""
    try:
        import matplotlib  # noqa: F401 - only whether it is there; trainer.report draws with it
    except ImportError:
        raise TpuctlError("tpuctl report draws with matplotlib, which is not installed: "
                          "pip install 'tpuctl[report]'") from None
    from trainer.metrics_log import parse_metrics
    from trainer.report import ReportError, check_smooth, render_report

    try:
        check_smooth(smooth)
    except ReportError as exc:
        raise BadInput(str(exc)) from None
    return render_report, parse_metrics


def register(app: typer.Typer) -> None:
    app.command()(report)

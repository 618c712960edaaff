"""`trainer`: run GRPO with a preset, a YAML file, `--set` overrides and the upstream environment variables;
`trainer report RUN_DIR...`: plot runs' metrics.jsonl into an HTML page and PNGs, no JAX needed.

Exit codes: 0 done; 2 a configuration error or bad report input (one line naming key, value and
expectation); 143 stopped by SIGTERM after saving a checkpoint; 1 any other failure (one traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.config import ConfigError, load_config, to_yaml
from trainer.presets import PRESETS

EXIT_CONFIG_ERROR = 2
EXIT_SIGTERM = 143


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trainer", description="GRPO on GSM8K in JAX (cpu-tiny by default).")
    parser.add_argument("--preset", default="cpu-tiny", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--config", help="YAML file merged over the preset ($VARS expanded)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set rollout.batch_size=4 (value parsed as YAML)")
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    parser.epilog = "trainer report RUN_DIR [RUN_DIR ...]: plots of runs' metrics.jsonl (trainer report --help)"
    return parser.parse_args(argv)


def parse_report_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trainer report",
                                     description="Plot runs' metrics.jsonl: report.html (self-contained) and a PNG "
                                                 "per panel. Several runs overlay on the same axes.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run's out_dir, or its metrics.jsonl")
    parser.add_argument("--out", metavar="DIR", help="folder for report.html and the PNGs (default: RUN_DIR/report for one run)")
    parser.add_argument("--smooth", type=float, default=0.0, metavar="X",
                        help="EMA weight in [0, 1) drawn over the raw points, e.g. 0.9 (default 0: off)")
    return parser.parse_args(argv)


def report_inputs(run_args: list[str], file_name: str) -> list[tuple[str, Path]]:
    """(label, metrics.jsonl path) per RUN_DIR argument: labelled by folder name, by path when names repeat."""
    from trainer.report import ReportError

    paths = [Path(run) / file_name if Path(run).is_dir() else Path(run) for run in run_args]
    for run, path in zip(run_args, paths, strict=True):
        if not path.is_file():
            raise ReportError(f"RUN_DIR: expected a run folder holding {file_name} (or the file), received {run!r}")
    labels = [path.resolve().parent.name for path in paths]
    if len(set(labels)) < len(labels):
        labels = [str(path.parent) for path in paths]
    return list(zip(labels, paths, strict=True))


def report_main(argv: list[str]) -> None:
    """`trainer report`: read each run's metrics.jsonl, render, print the page's path."""
    from trainer.metrics_log import FILE_NAME, read_metrics
    from trainer.report import ReportError, check_smooth, render_report

    args = parse_report_args(argv)
    try:
        check_smooth(args.smooth)
        inputs = report_inputs(args.runs, FILE_NAME)
        if args.out is None and len(inputs) > 1:
            raise ReportError(f"--out: expected a folder for the report of {len(inputs)} runs, received none")
        runs = [(label, read_metrics(path)) for label, path in inputs]
        page = render_report(runs, args.out or inputs[0][1].parent / "report", args.smooth)
    except ReportError as error:
        print(f"report: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG_ERROR)
    for label, run in runs:
        if run.skipped_lines:
            print(f"warning: {label}: skipped unreadable lines {run.skipped_lines} of {FILE_NAME}", file=sys.stderr)
    print(page, flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        report_main(argv[1:])
        return
    args = parse_args(argv)
    from trainer.runtime import load_env_file

    load_env_file()
    try:
        config = load_config(args.preset, args.config, args.set)
        if args.print_config:
            print(to_yaml(config), end="", flush=True)
            return
        from trainer.loop import Terminated, train
        from trainer.runtime import start

        try:
            train(config, start(config))
        except Terminated:
            sys.exit(EXIT_SIGTERM)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG_ERROR)

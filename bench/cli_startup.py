"""`tpuctl --help` wall time against `python -c pass` (target: help <= 0.25 s). Prints JSON.

    python bench/cli_startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def wall_times(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    wall_times([sys.executable, "-m", "tpuctl", "--help"], 2)  # warm the page cache and bytecode
    baseline = statistics.median(wall_times([sys.executable, "-c", "pass"], runs))
    help_s = statistics.median(wall_times([sys.executable, "-m", "tpuctl", "--help"], runs))
    print(json.dumps({"runs": runs, "python_pass_s": round(baseline, 4), "tpuctl_help_s": round(help_s, 4),
                      "help_over_python": round(help_s / baseline, 2), "target_help_s": 0.25,
                      "meets_target": help_s <= 0.25}, indent=2))


if __name__ == "__main__":
    main()

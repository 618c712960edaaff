"""`tpuctl status` on 1, 2, 4 and 8 loopback sshd workers against one raw `ssh host true`. Prints JSON.

Target: status on 8 workers <= 1.3x status on one. Each figure is the median wall time of the
whole command (process start included), measured in the same run.

    python bench/status_fanout.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tpuctl.sim.vm import SimTpuVm, write_config


def median_wall(argv: list[str], runs: int, cwd: Path) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, cwd=cwd, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def raw_ssh(vm: SimTpuVm) -> list[str]:
    worker = vm.sshd[0]
    return ["ssh", "-i", str(vm.identity), "-p", str(worker.port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            f"root@{worker.address}", "true"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, SimTpuVm(Path(tmp) / "pod", workers=8) as vm:
        figures["raw_ssh_true_s"] = median_wall(raw_ssh(vm), runs, Path(tmp))
        for count in (1, 2, 4, 8):
            folder = Path(tmp) / f"p{count}"
            folder.mkdir()
            write_config(folder / "tpuctl.toml", vm.explicit_table(count, repo_path="~/repo"))
            figures[f"status_{count}_workers_s"] = median_wall([sys.executable, "-m", "tpuctl", "status"], runs, folder)
    one, eight = figures["status_1_workers_s"], figures["status_8_workers_s"]
    print(json.dumps({"runs": runs, **{k: round(v, 4) for k, v in figures.items()},
                      "status_8_over_1": round(eight / one, 2),
                      "status_1_over_raw_ssh": round(one / figures["raw_ssh_true_s"], 2),
                      "target_8_over_1": 1.3, "meets_target": eight / one <= 1.3}, indent=2))


if __name__ == "__main__":
    main()

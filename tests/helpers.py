"""Helpers the whole suite shares: git, loopback addresses for workers, a training repo's origin, waiting.

Fixtures live in conftest.py files; everything else a test imports comes from a helpers module, always
by its full name (`from tests.helpers import git`, `from tests.tpuctl.helpers import run`).
"""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

_ADDRESSES = itertools.count()
FAKE_TRAINER = Path(__file__).parent / "tpuctl" / "payload" / "fake_trainer.sh"


def next_address() -> str:
    """A fresh loopback address per worker (127.0.0.2, 127.0.0.3, ...), as a pod's hosts have."""
    n = next(_ADDRESSES)
    return f"127.0.{n // 250}.{n % 250 + 2}"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_origin(root: Path, with_fake_trainer: bool = True) -> Path:
    """A bare git repository holding a small project (`root/origin.git`, worked on in `root/origin-work`)."""
    bare = root / "origin.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), cwd=root)
    work = root / "origin-work"
    git("clone", "--quiet", str(bare), str(work), cwd=root)
    (work / "README.md").write_text("training repo\n")
    if with_fake_trainer:
        (work / "fake_trainer.sh").write_text(FAKE_TRAINER.read_text())
        (work / "fake_trainer.sh").chmod(0o755)
    git("add", "-A", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "initial", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return bare


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1):
    """The first truthy value of `predicate()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")

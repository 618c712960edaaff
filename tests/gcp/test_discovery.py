"""Every SOP command works through discovery exactly as with explicit hosts."""

from __future__ import annotations

import json

from tests.conftest import git
from tests.tpuctl.conftest import run


def test_one_worker_sync_launch_status_through_discovery(make_pod):
    pod = make_pod(1)
    synced = run("sync")
    assert synced.code == 0, synced.all
    head = git("rev-parse", "HEAD", cwd=pod.origin)
    assert git("rev-parse", "HEAD", cwd=pod.remote(0, "~/repo")) == head
    assert f"w0 {pod.workers[0].address}:{pod.workers[0].port}" in synced.out
    launched = run("launch", "--name", "one", "--", "bash", "-c", "echo step=1 loss=0.5; sleep 30")
    assert launched.code == 0, launched.all
    status = run("status", "--name", "one", "--json")
    assert status.code == 0, status.all
    rows = json.loads(status.out)
    assert [(r["worker"], r["state"]) for r in rows] == [(0, "running")]
    assert run("stop", "--name", "one", "--grace", "1").code == 0

"""Each class of TPU API error is one clear line and exit 1; 429 and 503 are retried with backoff."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tpuctl.helpers import run
from tpuctl.sim.fake_tpu_api import DEFAULT_RUNTIMES, SimEndpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api_only(make_pod):
    """A target naming TPU 'pod', which the API lists (its workers are never contacted here)."""
    pod = make_pod(0, node=False)
    pod.api.add_node(pod.name, [SimEndpoint("10.130.0.2", "203.0.113.2")])
    return pod


def one_error_line(result) -> str:
    assert result.code == 1, result.all
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


def node_reads(pod) -> int:
    return sum(1 for r in pod.api.requests if r.method == "GET" and r.path.endswith("/nodes"))


def test_403_names_the_project_and_what_to_check(api_only):
    line = one_error_line(run("--project", "someone-elses", "list"))
    assert line.startswith("error: cannot list TPUs in someone-elses/us-central2-b: permission denied (403): "
                           "Permission 'tpu.nodes.list' denied on resource 'projects/someone-elses'")
    assert "check the project ID, that the Cloud TPU API is enabled there" in line


def test_404_names_the_missing_node(api_only):
    line = one_error_line(run("--tpu", "ghost", "sync", "--dry-run"))
    assert line == ("error: cannot get TPU 'ghost' (sim-project/us-central2-b): not found (404): Resource "
                    "'projects/sim-project/locations/us-central2-b/nodes/ghost' was not found")
    line = one_error_line(run("--tpu", "ghost", "describe"))
    assert line == "error: TPU 'ghost' (sim-project/us-central2-b) does not exist, nor a queued resource of that name"


def test_409_on_create_is_one_line_and_not_retried(api_only):
    api_only.api.fail(409, method="POST", path="/nodes", message="The resource is being modified")
    line = one_error_line(run("--tpu", "fresh", "up", "-a", "v4-8", "--runtime-version", DEFAULT_RUNTIMES[0]))
    assert line == ("error: cannot create TPU 'fresh' (sim-project/us-central2-b): conflict (409): The resource "
                    "is being modified; it already exists or another operation on it is still running")
    assert [r.method for r in api_only.api.changes()] == ["POST"]


@pytest.mark.parametrize("code", [429, 503])
def test_429_and_503_are_retried_until_they_pass(api_only, code):
    api_only.api.fail(code, method="GET", path="/nodes", times=2, retry_delay_s=0.01)
    result = run("list", "--json")
    assert result.code == 0, result.all
    assert '"name": "pod"' in result.out
    assert node_reads(api_only) == 3


def test_persistent_429_gives_up_after_five_attempts(api_only):
    api_only.api.fail(429, method="GET", path="/nodes", times=99, retry_delay_s=0.01, message="Quota exceeded")
    line = one_error_line(run("list"))
    assert line == ("error: cannot list TPUs in sim-project/us-central2-b: quota or rate limit exceeded (429) after "
                    "5 attempts: Quota exceeded; wait a little, or ask for more quota")
    assert node_reads(api_only) == 5


def test_500_is_reported_at_once(api_only):
    api_only.api.fail(500, method="GET", path="/nodes", message="Internal error")
    line = one_error_line(run("list"))
    assert line == ("error: cannot list TPUs in sim-project/us-central2-b: the TPU API failed (500): Internal "
                    "error; try again later")
    assert node_reads(api_only) == 1


def test_an_unreachable_endpoint_is_one_line(api_only):
    line = one_error_line(run("--set", "tpu_api_endpoint=http://127.0.0.1:1", "describe"))
    assert line.startswith("error: cannot get TPU 'pod' (sim-project/us-central2-b): cannot reach the TPU API "
                           "(ConnectionError: ")


def test_missing_credentials_say_how_to_log_in(tmp_path):
    """A real process on the real endpoint with no credentials anywhere: it stops before any request."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TPUCTL_", "GOOGLE_", "CLOUDSDK_", "GCE_"))}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true",
               PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "tpuctl", "--project", "my-project", "--zone", "us-central2-b",
                             "list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == ("error: no Google Cloud credentials found (Application Default Credentials): "
                                     "run `gcloud auth application-default login`")

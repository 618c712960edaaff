"""Bad input to the TPU commands: one line naming the value and what was expected, exit 2, and no API call
that creates, deletes or updates anything (the fake API records every request)."""

from __future__ import annotations

import pytest

from tests.tpuctl.helpers import run
from tpuctl.sim.fake_tpu_api import DEFAULT_RUNTIMES, SimEndpoint

RT = DEFAULT_RUNTIMES[0]
UP = ("up", "-a", "v4-8", "--runtime-version", RT)
FRESH = ("--tpu", "fresh")
CASES = [
    ((*FRESH, "--zone", "us-west9-z", *UP), "zone 'us-west9-z' offers no TPUs to project 'sim-project': expected one "
                                             "of europe-west4-a, us-central2-b, us-east1-d"),
    ((*FRESH, "--zone", "uscentral2b", *UP), "zone: expected a zone such as 'us-central2-b', received 'uscentral2b'"),
    ((*FRESH, "up", "-a", "v9-8", "--runtime-version", RT), "accelerator type 'v9-8' is not offered in "
                                                           "us-central2-b: expected one of v4-16, v4-24"),
    ((*FRESH, "up", "-a", "V4_8", "--runtime-version", RT), "accelerator_type: expected a type such as v4-8 or "
                                                           "v5litepod-16, received 'V4_8'"),
    ((*FRESH, "up", "-a", "v4-8"), "runtime_version: not set; expected e.g. tpu-ubuntu2204-base"),
    ((*FRESH, "up", "-a", "v4-8", "--runtime-version", "tpu-vm-9"), "runtime version 'tpu-vm-9' is not offered in "
                                                                    "us-central2-b"),
    ((*FRESH, "up", "--runtime-version", RT), "accelerator_type: not set; expected e.g. v4-8"),
    (("--tpu", "My_TPU", *UP), "name: expected a TPU name: lowercase letters, digits and '-', starting with a "
                               "letter, at most 63 characters, received 'My_TPU'"),
    (("--set", "name=", *UP), "name: not set; expected the TPU VM's name (--tpu, TPUCTL_NAME or name in tpuctl.toml)"),
    ((*FRESH, "--set", "project=", *UP), "project: not set; expected a Google Cloud project ID (--project, "
                                         "TPUCTL_PROJECT or project in tpuctl.toml)"),
    ((*FRESH, "--set", "zone=", "describe"), "zone: not set; expected a zone such as 'us-central2-b'"),
    ((*FRESH, "--project", "X", *UP), "project: expected a Google Cloud project ID such as 'my-project-123', "
                                      "received 'X'"),
    ((*FRESH, *UP, "--label", "Team=rl"), "bad label key 'Team': expected a lowercase letter"),
    ((*FRESH, *UP, "--label", "team=R&D"), "bad value 'R&D' for label 'team'"),
    ((*FRESH, *UP, "--label", "team"), "bad --label 'team': expected KEY=VALUE"),
    ((*FRESH, *UP, "--spot", "--preemptible"), "--spot and --preemptible exclude each other"),
    ((*FRESH, *UP, "--queued", "--preemptible"), "--preemptible does not apply to a queued resource"),
    ((*FRESH, *UP, "--network", "Bad_Net"), "bad --network 'Bad_Net': expected a name such as 'default'"),
    ((*FRESH, "--set", "identity_file=", *UP, "--add-ssh-key"), "identity_file: not set; adding an SSH key needs"),
    (UP, "TPU 'pod' (sim-project/us-central2-b) already exists (READY): use it, or delete it first"),
    (("--tpu", "ghost", "down", "--yes"), "TPU 'ghost' (sim-project/us-central2-b) does not exist, nor a queued "
                                          "resource of that name: nothing to delete"),
    (("add-ssh-key",), "TPU 'pod' (sim-project/us-central2-b) uses OS Login (metadata enable-oslogin=TRUE), which "
                       "ignores keys in its metadata"),
    (("--set", "ssh_port=0", "sync"), "ssh_port: expected a port from 1 to 65535, received 0"),
    (("--set", "internal_ip=maybe", "sync"), "internal_ip in flag: expected true or false, received 'maybe'"),
    (("--set", "proxy_command=nc {hots} {port}", "sync"), "proxy_command: expected a command using only the "
                                                         "placeholders {host} {port} {instance}"),
    (("--set", "tpu_api_endpoint=localhost:8080", "list"), "tpu_api_endpoint: expected a URL such as "
                                                          "https://tpu.googleapis.com, received 'localhost:8080'"),
    (("--set", "name=", "--set", "hosts=", "sync"), "target 'tpu' has no hosts"),
]


@pytest.fixture
def oslogin_pod(make_pod):
    """TPU 'pod' exists and uses OS Login; no SSH is needed to refuse any of the inputs."""
    pod = make_pod(0, node=False)
    pod.api.add_node(pod.name, [SimEndpoint("10.130.0.2", "203.0.113.2")], metadata={"enable-oslogin": "TRUE"})
    return pod


@pytest.mark.parametrize("args, expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_refused_before_anything_changes(oslogin_pod, args, expected):
    result = run(*args)
    assert result.code == 2, result.all
    assert expected in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert oslogin_pod.api.changes() == []
    assert not oslogin_pod.api.has_node("fresh")

"""`tpuctl babysit` on a simulated spot TPU VM: the fake TPU API preempts the node (its workers power off)
and creates it again on request with a new node id, new host keys and empty disks; the run's checkpoints
live in a bucket of the local GCS emulator, which outlives the VM as a real bucket does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import tpu_v2

from tests.e2e.helpers import SimProject
from tests.helpers import wait_for

STEP = "step={} "


def start_babysit(project: SimProject, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tpuctl", "babysit", "--poll", "0.5", *args], cwd=project.folder,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": "200"})


def events(project: SimProject, name: str) -> list[dict]:
    path = project.folder / "logs" / f"{name}.events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def actions(project: SimProject, name: str) -> list[str]:
    return [e["action"] for e in events(project, name) if e["event"] == "action"]


def run_log(project: SimProject, name: str) -> str:
    path = project.vm.remote(0, f"~/repo/logs/{name}_latest.log")
    return path.read_text() if path.exists() else ""


def running(project: SimProject, name: str) -> bool:
    return any(e["event"] == "observed" and e["runs"] == ["running"] for e in events(project, name))


def finish(babysit: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = babysit.communicate(timeout=timeout)
    return babysit.returncode, out, err


def trainer_command(gcs_env: dict[str, str], bucket: str, steps: int) -> list[str]:
    settings = {"steps": steps, "checkpoint.every_steps": 2, "checkpoint.dir": bucket, "out_dir": "runs/long",
                "rollout.batch_size": 4, "train.micro_batch_size": 8}
    return [*(f"{k}={v}" for k, v in {**gcs_env, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}.items()),
            "python", "-m", "trainer", *(word for k, v in settings.items() for word in ("--set", f"{k}={v}"))]


def test_a_preempted_run_is_recreated_and_resumes_from_its_bucket_checkpoint(sim_spot, gcs_emulator, gcs_bucket):
    vm = sim_spot.vm
    first_id = vm.api.node(vm.name).id
    babysit = start_babysit(sim_spot, "--name", "long", "--", *trainer_command(gcs_emulator.env, gcs_bucket, 8))
    try:
        wait_for(lambda: STEP.format(3) in run_log(sim_spot, "long") or babysit.poll() is not None, timeout=600)
        assert babysit.poll() is None, babysit.communicate()
        lines_before = run_log(sim_spot, "long").splitlines()
        vm.api.preempt(vm.name)
        code, out, err = finish(babysit)
    finally:
        babysit.kill()
    assert code == 0, out[-3000:] + err[-3000:]
    seen_before = max(int(line.split()[0][5:]) for line in lines_before if line.startswith("step="))

    log = run_log(sim_spot, "long")  # on the recreated VM's fresh disk
    resumed = [line for line in log.splitlines() if line.startswith("resumed from checkpoint ")]
    assert len(resumed) == 1 and gcs_bucket in resumed[0]
    checkpoint = int(resumed[0].split()[3])
    assert checkpoint % 2 == 0 and 0 < seen_before + 1 - checkpoint <= 2  # lost at most the checkpoint interval
    steps = [int(line.split()[0][5:]) for line in log.splitlines() if line.startswith("step=")]
    assert steps == list(range(checkpoint, 8))
    assert vm.remote(0, "~/repo/logs/long_latest.exit").read_text() == "0\n"
    assert "WANDB_API_KEY=" in vm.remote(0, "~/.env").read_text()  # the secrets were pushed to the new VM

    recorded = events(sim_spot, "long")
    assert actions(sim_spot, "long") == ["launch", "recreate", "launch", "succeed"]
    observed = [(e["node"], tuple(e["runs"])) for e in recorded if e["event"] == "observed"]
    assert observed[0] == ("READY", ("none",)) and ("READY", ("running",)) in observed
    assert ("PREEMPTED", ()) in observed and observed[-1] == ("READY", ("exited",))
    heads = [e.get("head") for e in recorded if e["event"] == "launched"]
    assert len(heads) == 2 and heads[0] == heads[1] and len(heads[0]) == 40  # resumed on the first launch's commit
    new_id = vm.api.node(vm.name).id
    assert new_id != first_id and recorded[-1]["event"] == "done" and recorded[-1]["result"] == "succeed"
    assert [e["node_id"] for e in recorded if e["event"] == "observed"][-1] == str(new_id)
    assert vm.generation == 1  # the workers were replaced once, with new host keys...
    pins = json.loads(Path(os.environ["TPUCTL_KNOWN_TPUS"]).read_text())
    assert str(new_id) in json.dumps(pins) and str(first_id) not in json.dumps(pins)  # ...which were re-pinned
    assert "restarts" in out and "time lost to preemptions" in out

    status = sim_spot.tpuctl("status", "--name", "long")
    assert status.code == 0 and "babysit: 1 restart(s), 1 preemption(s), 0 failure(s)" in status.out, status.out


def test_an_application_failure_is_not_retried(sim_spot):
    babysit = start_babysit(sim_spot, "--name", "bad", "--", "bash", "-c", "echo the data is missing >&2; exit 7")
    code, out, err = finish(babysit)
    assert code == 7, out + err
    assert "w0: the data is missing" in out
    assert actions(sim_spot, "bad") == ["launch", "fail"]
    assert [e["event"] for e in events(sim_spot, "bad")].count("launched") == 1


def test_max_failures_relaunches_flaky_code(sim_spot):
    flaky = "if [ -e ~/flaked ]; then echo second try; else touch ~/flaked; exit 1; fi"
    babysit = start_babysit(sim_spot, "--name", "flaky", "--max-failures", "1", "--", "bash", "-c", flaky)
    code, out, err = finish(babysit)
    assert code == 0, out + err
    assert actions(sim_spot, "flaky") == ["launch", "relaunch", "succeed"]
    assert "second try" in run_log(sim_spot, "flaky")
    launched = [e for e in events(sim_spot, "flaky") if e["event"] == "launched"]
    assert len(launched) == 2 and launched[0]["run_id"] != launched[1]["run_id"]


def test_a_preemption_past_max_preemptions_gives_up_without_recreating(sim_spot):
    vm = sim_spot.vm
    babysit = start_babysit(sim_spot, "--name", "capped", "--max-preemptions", "0", "--", "sleep", "60")
    try:
        wait_for(lambda: running(sim_spot, "capped"), timeout=120)
        before = len(vm.api.changes())
        vm.api.preempt(vm.name)
        code, out, err = finish(babysit)
    finally:
        babysit.kill()
    assert code == 3, out + err
    assert actions(sim_spot, "capped") == ["launch", "give-up"]
    assert "preemption 1 is over --max-preemptions 0" in out
    assert vm.api.changes()[before:] == []  # nothing deleted, nothing created


def test_a_restarted_babysit_watches_the_run_it_started_and_starts_no_second_one(sim_spot):
    babysit = start_babysit(sim_spot, "--name", "once", "--", "sleep", "8")
    try:
        wait_for(lambda: running(sim_spot, "once"), timeout=120)
    finally:
        babysit.send_signal(signal.SIGKILL)
        babysit.wait()
    again = start_babysit(sim_spot, "--name", "once", "--", "sleep", "8")
    sim_spot.vm.api.fail(500, "GET", f"nodes/{sim_spot.vm.name}", times=2)  # the API fails two turns: not fatal
    code, out, err = finish(again)
    assert code == 0, out + err
    assert [e["attempt"] for e in events(sim_spot, "once") if e["event"] == "error"] == [1, 2]
    assert [e["event"] for e in events(sim_spot, "once")].count("launched") == 1
    assert actions(sim_spot, "once") == ["launch", "succeed"]
    assert len(list(sim_spot.vm.remote(0, "~/repo/logs").glob("once_*.log"))) == 2  # the run and its latest link
    assert "resumed" in out


def test_a_queued_resource_waits_for_capacity_before_it_is_provisioned_again(sim_spot):
    vm = sim_spot.vm
    client = tpu_v2.TpuClient(transport="rest", credentials=AnonymousCredentials(),
                              client_options=ClientOptions(api_endpoint=vm.api.endpoint))
    parent = f"projects/{vm.api.project}/locations/{vm.api.zones[0]}"
    client.delete_node(name=f"{parent}/nodes/{vm.name}").result(timeout=60)
    spec = tpu_v2.QueuedResource.Tpu.NodeSpec(parent=parent, node_id=vm.name, node=tpu_v2.Node(
        accelerator_type="v4-8", runtime_version=vm.api.runtimes[0]))
    client.create_queued_resource(parent=parent, queued_resource_id=vm.name, queued_resource=tpu_v2.QueuedResource(
        tpu=tpu_v2.QueuedResource.Tpu(node_spec=[spec]), spot=tpu_v2.QueuedResource.Spot())).result(timeout=60)
    wait_for(lambda: client.get_queued_resource(name=f"{parent}/queuedResources/{vm.name}").state.state.name == "ACTIVE")
    babysit = start_babysit(sim_spot, "--name", "queued", "--", "sleep", "5")
    try:
        wait_for(lambda: running(sim_spot, "queued"), timeout=120)
        vm.api.queue_wait_polls = 4
        vm.api.preempt(vm.name)
        code, out, err = finish(babysit)
    finally:
        babysit.kill()
    assert code == 0, out + err
    assert actions(sim_spot, "queued") == ["launch", "recreate", "launch", "succeed"]
    queue = [e["queued"] for e in events(sim_spot, "queued") if e["event"] == "observed"]
    assert "SUSPENDED" in queue and "WAITING_FOR_RESOURCES" in queue and queue[-1] == "ACTIVE"
    assert "queued resource WAITING_FOR_RESOURCES" in out


def test_a_trainer_checkpointing_to_the_vms_disk_is_refused(sim_spot):
    result = sim_spot.tpuctl("babysit", "--", "python", "-m", "trainer", "--set", "steps=100")
    assert result.code == 2
    assert "checkpoint.dir: expected a gs:// bucket that outlives the VM" in result.err
    assert "add --set checkpoint.dir=gs://BUCKET/PATH" in result.err
    assert not (sim_spot.folder / "logs").exists() and sim_spot.vm.api.changes() == []

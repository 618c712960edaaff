"""IAP-style access: workers without external IPs, reached by instance name through a ProxyCommand relay."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from tests.tpuctl.helpers import run
from tpuctl.config import IAP_PROXY_COMMAND, Target
from tpuctl.sim import tcp_relay
from tpuctl.sim.fake_tpu_api import SimEndpoint, host_keys_of
from tpuctl.workers import Worker, proxy_for


def test_workers_are_reached_only_through_the_relay(make_pod, tmp_path):
    pod = make_pod(2, node=False)
    # Internal addresses nothing on this machine answers at, no external IPs: only the relay gets through,
    # and it knows the workers by instance name, as IAP does.
    instances = [f"t1v-n-5eed-w-{i}" for i in range(2)]
    pod.api.add_node(pod.name, [SimEndpoint(f"10.130.7.{i + 2}", "", host_keys_of(w.host_key.with_suffix(".pub")),
                                            instances[i]) for i, w in enumerate(pod.workers)],
                     accelerator_type="v4-16")
    log = tmp_path / "relay.log"
    routes = " ".join(f"--route {name}={w.address}" for name, w in zip(instances, pod.workers, strict=True))
    pod.write_config(proxy_command=f"{sys.executable} {Path(tcp_relay.__file__)} --log {log} {routes} "
                                   "{instance} {port}")
    trusted = run("--tunnel-through-iap", "trust")
    assert trusted.code == 0, trusted.all
    assert trusted.out.count("pinned") == 2
    synced = run("--tunnel-through-iap", "sync")
    assert synced.code == 0, synced.all
    assert "w0 10.130.7.2:" in synced.out and "w1 10.130.7.3:" in synced.out
    assert run("--tunnel-through-iap", "launch", "--", "true").code == 0
    rows = json.loads(run("--tunnel-through-iap", "status", "--json").out)
    assert [row["worker"] for row in rows] == [0, 1]
    dry = run("--tunnel-through-iap", "sync", "--dry-run", "--worker", "1")
    relay = f"{sys.executable} {Path(tcp_relay.__file__)} --log {log} {routes} {instances[1]} {pod.workers[1].port}"
    assert f"# worker 1: ssh -o ProxyCommand={shlex.quote(relay)} -p {pod.workers[1].port} root@10.130.7.3" in dry.out
    port = pod.workers[0].port
    relayed = log.read_text().splitlines()
    for name, worker in zip(instances, pod.workers, strict=True):
        assert f"{name} {port} -> {worker.address}" in relayed


def test_the_default_iap_proxy_is_gclouds_tunnel_to_the_instance():
    target = Target(name="pod", project="my-project", zone="us-central2-b", tunnel_through_iap=True)
    worker = Worker(index=1, host="10.130.0.3", port=22, instance="t1v-n-abc-w-1")
    assert target.proxy_template == IAP_PROXY_COMMAND
    assert proxy_for(target, worker) == ("gcloud compute start-iap-tunnel t1v-n-abc-w-1 22 --listen-on-stdin "
                                         "--project my-project --zone us-central2-b --verbosity warning")
    assert proxy_for(Target(name="pod"), worker) is None


def test_the_proxy_command_runs_as_written_percent_signs_included(make_pod, tmp_path):
    """A ProxyCommand is a command, not ssh_config text: a `%h` or `%p` in the template or in an instance
    name the TPU API publishes reaches the proxy literally, never expanded to the host or port."""
    pod = make_pod(1, node=False)
    instance = "t1v-n-%h-w-%p"
    pod.api.add_node(pod.name, [SimEndpoint("10.130.7.2", "", host_keys_of(pod.workers[0].host_key.with_suffix(".pub")),
                                            instance)], accelerator_type="v4-8")
    log = tmp_path / "relay-%h.log"
    pod.write_config(proxy_command=f"{sys.executable} {Path(tcp_relay.__file__)} --log {log} "
                                   f"--route {instance}={pod.workers[0].address} {{instance}} {{port}}")
    synced = run("sync")
    assert synced.code == 0, synced.all
    assert log.read_text().splitlines() == [f"{instance} {pod.workers[0].port} -> {pod.workers[0].address}"]

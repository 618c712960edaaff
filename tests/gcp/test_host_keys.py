"""Host keys from the TPU API's guest attributes: pinned per node id; a change fails closed, a recreation re-pins."""

from __future__ import annotations

from tests.tpuctl.helpers import run
from tpuctl.sim.fake_tpu_api import SimEndpoint
from tpuctl.sim.sshd import keygen

LABEL = "TPU 'pod' (sim-project/us-central2-b)"


def new_host_key(worker) -> None:
    """The VM comes back with a freshly generated host key (a reinstall, or an impostor)."""
    worker.stop()
    worker.host_key.unlink()
    worker.host_key.with_suffix(".pub").unlink()
    keygen(worker.host_key)
    worker.start()


def test_first_use_pins_the_published_keys_of_every_worker(make_pod):
    pod = make_pod(3, accelerator_type="v4-24")
    first = run("sync")
    assert first.code == 0, first.all
    assert (f"pinned the host keys of 3 worker(s) of {LABEL} (node id {pod.node_id}) from the TPU API"
            in first.err)
    assert pod.pins() == {pod.node_path: {"node_id": pod.node_id, "workers": [[w.fingerprint] for w in pod.workers]}}
    again = run("sync")
    assert again.code == 0 and "pinned" not in again.err


def test_a_changed_key_on_the_same_node_is_refused(make_pod):
    pod = make_pod(1)
    assert run("sync").code == 0
    pinned = pod.pin_file.read_text()
    old = pod.workers[0].fingerprint
    new_host_key(pod.workers[0])
    # The VM presents a new key while the API still publishes the pinned one: SSH refuses it.
    refused = run("sync")
    assert refused.code == 1
    assert f"presented host key {pod.workers[0].fingerprint}, but {old} is pinned: the key CHANGED" in refused.err
    # The API publishes the new key too, but the node id is the same: refused before connecting.
    pod.api.set_endpoints(pod.name, pod.endpoints())
    refused = run("sync")
    assert refused.code == 1
    assert (f"{LABEL} (node id {pod.node_id}): the TPU API now publishes host key {pod.workers[0].fingerprint} for "
            f"worker 0, but {old} is pinned and the node was not recreated: refusing to connect") in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert pod.pin_file.read_text() == pinned
    # After checking the key out of band, the user drops the old pins; the next command pins the new key.
    forgot = run("forget-keys")
    assert forgot.code == 0 and f"forgot the host keys pinned for {pod.node_path}" in forgot.out
    accepted = run("sync")
    assert accepted.code == 0, accepted.all
    assert pod.pins()[pod.node_path]["workers"] == [[pod.workers[0].fingerprint]]


def test_a_recreated_node_is_re_pinned_and_says_so(make_pod):
    pod = make_pod(2, accelerator_type="v4-16")
    assert run("sync").code == 0
    old_id = pod.node_id
    for worker in pod.workers:
        new_host_key(worker)
    new_id = str(pod.api.recreate_node(pod.name, pod.endpoints()))
    result = run("sync")
    assert result.code == 0, result.all
    assert (f"{LABEL} was recreated (node id {old_id} -> {new_id}): re-pinned the host keys of 2 worker(s) "
            "from the TPU API") in result.err
    assert pod.pins()[pod.node_path] == {"node_id": new_id, "workers": [[w.fingerprint] for w in pod.workers]}


def test_unpublished_keys_are_refused_until_pinned_by_hand(make_pod):
    pod = make_pod(1, node=False)
    worker = pod.workers[0]
    pod.api.add_node(pod.name, [SimEndpoint(worker.address, worker.address)])  # no guest attributes
    refused = run("sync")
    assert refused.code == 1
    assert f"presented an unknown ssh-ed25519 host key {worker.fingerprint}; nothing is pinned for it" in refused.err
    shown = run("trust")
    assert shown.code == 0 and worker.fingerprint in shown.out and "not pinned" in shown.out
    assert run("trust", "--write").code == 0  # into tpuctl.toml, as for explicit hosts
    assert run("sync").code == 0

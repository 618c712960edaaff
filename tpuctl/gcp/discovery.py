"""A TPU VM's workers, found through the TPU API: addresses from get_node, host keys from guest attributes.

The number of workers is the number of network endpoints. Each worker is reached at its external IP
when it has one (as gcloud does), at its internal IP with `internal_ip` or `tunnel_through_iap`; the
internal IP is always the address the other workers use (the JAX coordinator's). SSH goes to
`ssh_port` (22 on TPU VMs: the endpoint's own port is the TPU runtime's, not SSH).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from google.cloud import tpu_v2
from rich.markup import escape

from tpuctl.config import Target
from tpuctl.console import TpuctlError, err_console
from tpuctl.gcp.api import TpuApi, connect, require
from tpuctl.gcp.pins import PinStore, reconcile
from tpuctl.workers import Worker

PREEMPTED_STATES = ("PREEMPTED", "TERMINATED")
# States gcloud refuses to connect in; the others but READY are passing (CREATING, REPAIRING, ...).
UNUSABLE_STATES = ("STOPPED", "STOPPING", "DELETING", "HIDDEN", *PREEMPTED_STATES)
_KEY_TYPES = (b"ssh-", b"ecdsa-", b"sk-")


@dataclass(frozen=True)
class Published:
    """What one worker's guest attributes say: its host-key fingerprints and its instance name."""

    fingerprints: tuple[str, ...] = ()
    instance: str = ""


def discover_workers(target: Target, require_ready: bool = True) -> list[Worker]:
    """The workers of the target's TPU VM, with host keys pinned (see tpuctl.gcp.pins)."""
    name = require(target, "name", "the TPU VM's name")
    api = connect(target)
    node = api.get_node(name)
    check_usable(api.label(name), node.state.name, require_ready)
    endpoints = list(node.network_endpoints)
    if not endpoints:
        raise TpuctlError(f"{api.label(name)} is {node.state.name} and lists no workers{_state_hint(node.state.name)}")
    published = read_published(api, name, len(endpoints))
    pins = pin_keys(api, name, str(node.id), published)
    return [worker_at(target, index, endpoint, pins[index], published[index].instance)
            for index, endpoint in enumerate(endpoints)]


def check_usable(label: str, state: str, require_ready: bool) -> None:
    if state == "READY":
        return
    if state in UNUSABLE_STATES:
        if require_ready:
            raise TpuctlError(f"{label} is {state}: its workers cannot be used{_state_hint(state)}")
        return
    err_console.print(f"[yellow]warning:[/] {escape(label)} is {state}: its workers may not answer yet",
                      highlight=False)


def _state_hint(state: str) -> str:
    if state in PREEMPTED_STATES:
        return "; recreate it: tpuctl down --yes, then tpuctl up"
    if state in ("STOPPED", "STOPPING"):
        return "; start it first (gcloud compute tpus tpu-vm start)"
    return ""


def read_published(api: TpuApi, name: str, count: int) -> list[Published]:
    """Each worker's published host keys and instance name, in worker order (missing ones are empty)."""
    found = [published_by(attributes) for attributes in api.guest_attributes(name)]
    return (found + [Published()] * count)[:count]


def published_by(attributes: tpu_v2.GuestAttributes) -> Published:
    fingerprints, instance = [], ""
    for item in attributes.query_value.items:
        if item.namespace == "hostkeys":
            fingerprint = key_fingerprint(item.value)
            if fingerprint and fingerprint not in fingerprints:
                fingerprints.append(fingerprint)
        elif item.key == "hostname":
            instance = item.value.strip()
    return Published(tuple(fingerprints), instance)


def key_fingerprint(value: str) -> str | None:
    """OpenSSH's SHA256 fingerprint of a published key ("BLOB" or "TYPE BLOB [comment]"); None if malformed."""
    tokens = value.split()
    if not tokens:
        return None
    try:
        blob = base64.b64decode(tokens[1] if len(tokens) > 1 else tokens[0], validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(blob) < 8 or not blob[4:].startswith(_KEY_TYPES):
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def pin_keys(api: TpuApi, name: str, node_id: str, published: list[Published]) -> list[tuple[str, ...]]:
    """The pinned fingerprints per worker, after pinning what is new; says what it pinned."""
    store = PinStore()
    key = api.node_path(name)
    stored = store.get(key)
    pins, note = reconcile(api.label(name), stored, node_id, [p.fingerprints for p in published])
    if pins != stored and any(pins.workers):
        store.put(key, pins)
    if note:
        style = "yellow" if stored is not None and stored.node_id != node_id else "dim"
        err_console.print(f"[{style}]{escape(note)}[/]", highlight=False)
    return list(pins.workers)


def worker_at(target: Target, index: int, endpoint: tpu_v2.NetworkEndpoint, pinned: tuple[str, ...],
              instance: str) -> Worker:
    internal = endpoint.ip_address
    external = endpoint.access_config.external_ip if endpoint.access_config else ""
    use_internal = target.internal_ip or target.tunnel_through_iap or not external
    manual = target.host_keys[index] if index < len(target.host_keys) else ""
    fingerprints = pinned + ((manual,) if manual and manual not in pinned else ())
    return Worker(index=index, host=internal if use_internal else external, port=target.ssh_port,
                  fingerprints=fingerprints, peer_address=internal, instance=instance)


def node_state(target: Target) -> str | None:
    """The state of the target's TPU VM, or None when the target names none or the API cannot say."""
    if not (target.name and target.project and target.zone):
        return None
    try:
        return connect(target).get_node(target.name).state.name
    except TpuctlError as exc:
        err_console.print(f"[yellow]warning:[/] node state unknown: {escape(str(exc))}", highlight=False)
        return None

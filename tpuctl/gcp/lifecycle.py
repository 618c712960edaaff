"""Create, delete and change TPU VMs, waiting for each to finish with a live progress display."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from google.cloud import tpu_v2

from tpuctl.console import BadInput, TpuctlError, console
from tpuctl.gcp.api import TpuApi
from tpuctl.gcp.discovery import UNUSABLE_STATES
from tpuctl.gcp.spec import NodeRequest

# Poll quickly at first (an emulator or a fast operation answers at once), then back off.
POLL_FIRST_S = 0.2
POLL_MAX_S = 10.0
FAILED_QUEUE_STATES = ("FAILED", "SUSPENDING", "SUSPENDED")


@dataclass(frozen=True)
class Step:
    state: str
    done: bool = False


def wait_until(what: str, poll: Callable[[], Step], timeout_s: float, hint: str = "") -> None:
    """Poll until done, showing a spinner with the state and elapsed time and printing each new state."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    started, delay, last = time.monotonic(), POLL_FIRST_S, None
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(what)
        while True:
            step = poll()
            elapsed = time.monotonic() - started
            if step.state != last:
                progress.console.out(f"{what}: {step.state} after {elapsed:.0f} s", highlight=False)
                last = step.state
            progress.update(task, description=f"{what}: {step.state}")
            if step.done:
                return
            if elapsed >= timeout_s:
                raise TpuctlError(f"{what}: still {step.state} after {timeout_s:g} s{hint}")
            time.sleep(min(delay, max(timeout_s - elapsed, 0.0)))
            delay = min(delay * 1.5, POLL_MAX_S)


def create(api: TpuApi, request: NodeRequest, wait: bool, timeout_s: float) -> None:
    """Create the node (or its queued resource) and, with `wait`, return once it is READY."""
    if request.queued:
        api.create_queued(request.name, request.queued_resource(api.parent))
        poll = partial(_queued_step, api, request.name)
        hint = ("; the request stays queued: follow it with tpuctl describe or tpuctl list, cancel it with "
                "tpuctl down")
    else:
        operation = api.create_node(request.name, request.node())
        poll = partial(_creating_step, api, request.name, operation)
        hint = "; it may still become READY: follow it with tpuctl describe, or delete it with tpuctl down"
    if not wait:
        console.out(f"requested {api.label(request.name)}; follow it with tpuctl describe", highlight=False)
        return
    wait_until(f"creating {api.label(request.name)}", poll, timeout_s, hint)


def _creating_step(api: TpuApi, name: str, operation: Any) -> Step:
    api.operation_done(operation, f"create {api.label(name)}")
    node = api.find_node(name)
    state = node.state.name if node is not None else "REQUESTED"
    if state in UNUSABLE_STATES:
        raise TpuctlError(f"creating {api.label(name)}: the node became {state}")
    return Step(state, state == "READY")


def _queued_step(api: TpuApi, name: str) -> Step:
    resource = api.find_queued(name)
    if resource is None:
        raise TpuctlError(f"queued resource {name!r} in {api.zone} disappeared while waiting for it")
    state = resource.state.state.name
    if state in FAILED_QUEUE_STATES:
        detail = resource.state.failed_data.error.message if state == "FAILED" else ""
        raise TpuctlError(f"queued resource {name!r} in {api.zone} is {state}{': ' + detail if detail else ''}")
    if state != "ACTIVE":
        return Step(state)
    node = api.find_node(name)
    node_state = node.state.name if node is not None else "REQUESTED"
    return Step(f"ACTIVE, node {node_state}", node_state == "READY")


@dataclass(frozen=True)
class Deletion:
    """What `down` deletes: a node, or the queued resource that owns it (which takes the node along)."""

    name: str
    queued_resource: str  # its short name, or "" for a plain node
    description: str


def plan_deletion(api: TpuApi, name: str) -> Deletion:
    node = api.find_node(name)
    if node is not None:
        owner = node.queued_resource.rsplit("/", 1)[-1] if node.queued_resource else ""
        via = f", through its queued resource {owner!r}" if owner else ""
        return Deletion(name, owner, f"{api.label(name)}: {node.accelerator_type}, {len(node.network_endpoints)} "
                                     f"worker(s), {node.state.name}{via}")
    resource = api.find_queued(name)
    if resource is not None:
        return Deletion(name, name, f"queued resource {name!r} ({api.project}/{api.zone}), "
                                    f"{resource.state.state.name}, and any node it created")
    raise BadInput(f"{api.label(name)} does not exist, nor a queued resource of that name: nothing to delete")


def delete(api: TpuApi, deletion: Deletion, wait: bool, timeout_s: float) -> None:
    if deletion.queued_resource:
        operation = api.delete_queued(deletion.queued_resource)
    else:
        operation = api.delete_node(deletion.name)
    what = f"deleting {api.label(deletion.name)}"
    if not wait:
        console.out(f"{what}: requested", highlight=False)
        return
    wait_until(what, lambda: _deleting_step(api, deletion.name, operation, what), timeout_s)


def _deleting_step(api: TpuApi, name: str, operation: Any, what: str) -> Step:
    if api.operation_done(operation, what):
        return Step("DELETED", True)
    node = api.find_node(name)
    return Step(node.state.name if node is not None else "DELETING")


def uses_os_login(node: tpu_v2.Node) -> bool:
    return node.metadata.get("enable-oslogin", "").strip().upper() == "TRUE"


def has_ssh_key(ssh_keys: str, entry: str) -> bool:
    """Whether the ssh-keys metadata already grants `entry`'s key to `entry`'s user."""
    user, _, key = entry.partition(":")
    wanted = key.split()[:2]
    for line in ssh_keys.splitlines():
        line_user, _, line_key = line.strip().partition(":")
        if line_user == user and line_key.split()[:2] == wanted:
            return True
    return False


def add_ssh_key(api: TpuApi, name: str, entry: str, timeout_s: float) -> bool:
    """Add `user:key` to the node's ssh-keys metadata when missing, as gcloud does; False if already there."""
    node = api.get_node(name)
    if uses_os_login(node):
        raise BadInput(f"{api.label(name)} uses OS Login (metadata enable-oslogin=TRUE), which ignores keys in its "
                       "metadata: add yours with `gcloud compute os-login ssh-keys add --key-file KEY.pub` and set "
                       "user to your OS Login user name")
    current = node.metadata.get("ssh-keys", "")
    if has_ssh_key(current, entry):
        return False
    metadata = dict(node.metadata)
    metadata["ssh-keys"] = "\n".join(part for part in (current.rstrip("\n"), entry) if part)
    operation = api.update_metadata(name, metadata)
    what = f"adding the SSH key of {entry.partition(':')[0]!r} to {api.label(name)}"
    wait_until(what, lambda: Step("DONE", True) if api.operation_done(operation, what) else Step("UPDATING"),
               timeout_s)
    return True

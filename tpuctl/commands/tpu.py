"""TPU VM lifecycle through the Cloud TPU API: `up`, `down`, `list`, `describe`, `add-ssh-key`, `forget-keys`.

The target's name, project and zone say which TPU VM; google-cloud-tpu is imported only once a
command runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tpuctl.commands.common import JsonOpt, target_of
from tpuctl.console import TpuctlError, console

if TYPE_CHECKING:
    from tpuctl.config import Target

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the operation has finished.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait before giving up.")]


AcceleratorOpt = Annotated[str | None, typer.Option("--accelerator-type", "-a",
                                                    help="e.g. v4-8 (default: the target's).")]
RuntimeOpt = Annotated[str | None, typer.Option(help="e.g. tpu-ubuntu2204-base (default: the target's).")]
SpotOpt = Annotated[bool, typer.Option("--spot", help="A Spot VM: cheaper, may be preempted at any time.")]
PreemptibleOpt = Annotated[bool, typer.Option("--preemptible", help="A preemptible VM (the older kind of Spot).")]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE (repeatable), added to the target's.")]
InternalIpsOpt = Annotated[bool, typer.Option("--internal-ips", help="No external IPs (reach the workers through "
                                                                    "IAP or from inside the VPC).")]
QueuedOpt = Annotated[bool, typer.Option("--queued", help="Request a queued resource, granted when capacity frees up.")]
AddKeyOpt = Annotated[bool, typer.Option("--add-ssh-key", help="Put user:<identity_file>.pub into the node's "
                                                               "ssh-keys metadata.")]


def up(ctx: typer.Context, accelerator_type: AcceleratorOpt = None, runtime_version: RuntimeOpt = None,
       spot: SpotOpt = False, preemptible: PreemptibleOpt = False, label: LabelOpt = None,
       network: Annotated[str, typer.Option(help="VPC network (default: the project's default).")] = "",
       subnetwork: Annotated[str, typer.Option(help="Subnetwork of that network.")] = "",
       internal_ips: InternalIpsOpt = False, queued: QueuedOpt = False, add_key: AddKeyOpt = False,
       wait: WaitOpt = True, timeout: TimeoutOpt = 3600.0) -> None:
    """Create the target's TPU VM, wait until it is READY, then print its workers."""
    from tpuctl.gcp.api import connect
    from tpuctl.gcp.lifecycle import create
    from tpuctl.gcp.spec import NodeRequest, check_locally, check_with_api, parse_labels, ssh_key_entry

    target = target_of(ctx)
    request = NodeRequest(
        name=target.name, accelerator_type=accelerator_type or target.accelerator_type,
        runtime_version=runtime_version or target.runtime_version, spot=spot, preemptible=preemptible,
        labels={**target.labels, **parse_labels(label or [])}, network=network, subnetwork=subnetwork,
        external_ips=not internal_ips, queued=queued, ssh_key=ssh_key_entry(target) if add_key else "")
    check_locally(target, request)
    api = connect(target)
    check_with_api(api, request)
    create(api, request, wait, timeout)
    if wait:
        print_workers(target)


def print_workers(target: Target) -> None:
    """The workers as every other command will reach them (this also pins their host keys)."""
    from tpuctl.ops.targets import resolve_workers

    table = Table("worker", "ssh address", "internal IP", "instance", "host key", title=f"TPU {target.name!r}")
    for worker in resolve_workers(target):
        table.add_row(worker.label, worker.address, worker.peer_address, worker.instance,
                      ", ".join(worker.fingerprints) or "[yellow]none published[/]")
    console.print(table)


def down(ctx: typer.Context, yes: YesOpt = False, wait: WaitOpt = True, timeout: TimeoutOpt = 1800.0) -> None:
    """Delete the target's TPU VM (or its queued resource), after asking."""
    from tpuctl.gcp.api import connect, require
    from tpuctl.gcp.lifecycle import delete, plan_deletion
    from tpuctl.gcp.pins import PinStore

    target = target_of(ctx)
    name = require(target, "name", "the TPU VM's name")
    api = connect(target)
    deletion = plan_deletion(api, name)
    if not yes and not typer.confirm(f"Delete {deletion.description}? This cannot be undone.", default=False):
        console.out("nothing deleted", highlight=False)
        raise typer.Exit(1)
    delete(api, deletion, wait, timeout)
    if wait:
        PinStore().forget(api.node_path(name))
        console.out(f"deleted {api.label(name)}", highlight=False)


def list_tpus(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The TPU VMs and queued resources in the target's project and zone."""
    from tpuctl.gcp.api import connect
    from tpuctl.gcp.summary import node_summary, queued_summary

    api = connect(target_of(ctx))
    nodes = [node_summary(node) for node in api.list_nodes()]
    queued = [queued_summary(resource) for resource in api.list_queued()]
    if as_json:
        console.print_json(json.dumps({"nodes": nodes, "queued_resources": queued}))
        return
    table = Table("name", "state", "health", "accelerator", "runtime", "workers", "scheduling", "symptoms",
                  title=f"TPU VMs in {api.project}/{api.zone}")
    for node in nodes:
        table.add_row(node["name"], node["state"], node["health"], node["accelerator_type"], node["runtime_version"],
                      str(len(node["workers"])), node["scheduling"], escape("; ".join(node["symptoms"])))
    console.print(table)
    if queued:
        print_queued(queued)


def print_queued(queued: list[dict]) -> None:
    table = Table("queued resource", "state", "nodes", "accelerator", "spot", title="queued resources")
    for item in queued:
        table.add_row(item["name"], item["state"], ", ".join(item["nodes"]), item["accelerator_type"],
                      "yes" if item["spot"] else "")
    console.print(table)


def describe(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The target's TPU VM: state, health, symptoms, accelerator, runtime, workers and pinned host keys."""
    from tpuctl.gcp.api import connect, require
    from tpuctl.gcp.pins import PinStore
    from tpuctl.gcp.summary import node_summary, queued_summary

    target = target_of(ctx)
    name = require(target, "name", "the TPU VM's name")
    api = connect(target)
    node = api.find_node(name)
    resource = api.find_queued(name) if node is None or node.queued_resource else None
    if node is None and resource is None:
        raise TpuctlError(f"{api.label(name)} does not exist, nor a queued resource of that name")
    summary = node_summary(node, PinStore().get(api.node_path(name))) if node is not None else None
    queued = queued_summary(resource) if resource is not None else None
    if as_json:
        console.print_json(json.dumps({"node": summary, "queued_resource": queued}))
        return
    if summary is not None:
        print_node(summary)
    if queued is not None:
        print_queued([queued])


def print_node(summary: dict) -> None:
    rows = [("name", summary["name"]), ("id", summary["id"]), ("state", summary["state"]),
            ("health", summary["health"] or "-"), ("health description", summary["health_description"] or "-"),
            ("symptoms", "; ".join(summary["symptoms"]) or "-"), ("accelerator", summary["accelerator_type"]),
            ("runtime", summary["runtime_version"]), ("scheduling", summary["scheduling"]),
            ("labels", ", ".join(f"{k}={v}" for k, v in summary["labels"].items()) or "-"),
            ("queued resource", summary["queued_resource"] or "-"), ("created", summary["created"] or "-")]
    for key, value in rows:
        console.out(f"{key:>18}  {value}", highlight=False)
    table = Table("worker", "internal IP", "external IP", "pinned host key")
    for worker in summary["workers"]:
        table.add_row(f"w{worker['worker']}", worker["internal_ip"], worker["external_ip"] or "-",
                      ", ".join(worker.get("host_keys", [])) or "-")
    console.print(table)


def add_ssh_key(ctx: typer.Context, timeout: TimeoutOpt = 600.0) -> None:
    """Add user:<identity_file.pub> to the TPU VM's ssh-keys metadata when it is missing (not with OS Login)."""
    from tpuctl.gcp.api import connect, require
    from tpuctl.gcp.lifecycle import add_ssh_key as add_key
    from tpuctl.gcp.spec import ssh_key_entry

    target = target_of(ctx)
    name = require(target, "name", "the TPU VM's name")
    entry = ssh_key_entry(target)
    api = connect(target)
    added = add_key(api, name, entry, timeout)
    verb = "added" if added else "already had"
    console.out(f"{api.label(name)} {verb} the SSH key of {target.user!r} in its metadata", highlight=False)


def forget_keys(ctx: typer.Context) -> None:
    """Drop the host keys pinned for the target's TPU VM; the next command pins what the API publishes."""
    from tpuctl.gcp.api import node_path, require
    from tpuctl.gcp.pins import PinStore

    target = target_of(ctx)
    name = require(target, "name", "the TPU VM's name")
    key = node_path(require(target, "project", "a Google Cloud project ID"),
                    require(target, "zone", "a zone such as us-central2-b"), name)
    store = PinStore()
    forgotten = store.forget(key)
    console.out(f"{'forgot the' if forgotten else 'no'} host keys pinned for {key} in {store.path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command("list")(list_tpus)
    app.command()(describe)
    app.command("add-ssh-key")(add_ssh_key)
    app.command("forget-keys")(forget_keys)

"""Nodes and queued resources as the plain dicts that `list` and `describe` print (and emit as JSON)."""

from __future__ import annotations

from typing import Any

from google.cloud import tpu_v2

from tpuctl.gcp.pins import NodePins


def short(resource_name: str) -> str:
    return resource_name.rsplit("/", 1)[-1]


def scheduling(node: tpu_v2.Node) -> str:
    """How the node was provisioned: spot, preemptible, reserved, queued (see its queued resource) or on-demand."""
    config = node.scheduling_config
    for kind in ("spot", "preemptible", "reserved"):
        if getattr(config, kind):
            return kind
    return "queued" if node.queued_resource else "on-demand"


def node_summary(node: tpu_v2.Node, pins: NodePins | None = None) -> dict[str, Any]:
    """The fields a user asks about, with each worker's addresses (and pinned host keys when known)."""
    pinned = pins.workers if pins is not None and pins.node_id == str(node.id) else ()
    workers = []
    for index, endpoint in enumerate(node.network_endpoints):
        worker = {"worker": index, "internal_ip": endpoint.ip_address,
                  "external_ip": endpoint.access_config.external_ip if endpoint.access_config else ""}
        if pins is not None:
            worker["host_keys"] = list(pinned[index]) if index < len(pinned) else []
        workers.append(worker)
    return {
        "name": short(node.name), "id": str(node.id), "state": node.state.name,
        "health": "" if node.health == 0 else node.health.name, "health_description": node.health_description,
        "symptoms": [f"{s.symptom_type.name}: {s.details}".removeprefix("SYMPTOM_TYPE_UNSPECIFIED: ")
                     for s in node.symptoms],
        "accelerator_type": node.accelerator_type, "runtime_version": node.runtime_version,
        "scheduling": scheduling(node), "labels": dict(node.labels), "queued_resource": short(node.queued_resource),
        "created": node.create_time.isoformat() if node.create_time else "", "workers": workers,
    }


def queued_summary(resource: tpu_v2.QueuedResource) -> dict[str, Any]:
    specs = list(resource.tpu.node_spec)
    return {
        "name": short(resource.name), "state": resource.state.state.name,
        "nodes": [spec.node_id for spec in specs],
        "accelerator_type": specs[0].node.accelerator_type if specs else "",
        "spot": "spot" in resource, "created": resource.create_time.isoformat() if resource.create_time else "",
    }

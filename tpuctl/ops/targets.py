"""A target's workers: its explicit hosts, or its TPU VM's workers found through the TPU API; and the
`--worker` selection of them."""

from __future__ import annotations

from tpuctl.config import Target
from tpuctl.console import BadInput
from tpuctl.workers import Worker, explicit_workers, parse_worker_spec


def resolve_workers(target: Target, require_ready: bool = True) -> list[Worker]:
    """All workers of the target, in worker-index order: its explicit hosts, else its TPU VM's workers.

    A TPU VM's workers come from the TPU API (see tpuctl.gcp.discovery); `require_ready=False` also
    accepts a node that cannot be used now (e.g. PREEMPTED), for commands that only report on it.
    """
    if target.hosts:
        return explicit_workers(target)
    if target.name:
        from tpuctl.gcp.discovery import discover_workers

        return discover_workers(target, require_ready)
    raise BadInput(
        f"target {target.alias!r} has no hosts: set hosts = [\"host[:port]\", ...] in tpuctl.toml "
        f"or TPUCTL_HOSTS, or name a TPU VM (name, project, zone) to find its workers through the TPU API"
    )


def select_workers(target: Target, spec: str, require_ready: bool = True) -> list[Worker]:
    """The workers `spec` (0 | all | 0,2 | 1-3) selects, checked against the target's worker count."""
    workers = resolve_workers(target, require_ready)
    return [workers[i] for i in parse_worker_spec(spec, len(workers))]

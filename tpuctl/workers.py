"""A worker (one host of a target) and how it is named, reached and selected.

Worker prints as `worker 1 (10.0.0.3:22)` in messages; `--worker` selects by index (0 | all | 0,2 |
1-3); a target's explicit hosts make its workers here, a TPU VM's come from the TPU API
(tpuctl.gcp.discovery, chosen between in tpuctl.ops.targets); `proxy_for` fills in the ProxyCommand
that reaches one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tpuctl.config import HostPort, Target
from tpuctl.console import BadInput
from tpuctl.remote.render import fill_template

# ASCII digits only: int() would also read "１" (a full-width digit) as 1.
_RANGE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")


@dataclass(frozen=True)
class Worker:
    """One host of a target. `fingerprints` are the pinned host keys (any one may match)."""

    index: int
    host: str
    port: int
    fingerprints: tuple[str, ...] = ()
    # The address other workers reach this one at (a pod's internal IP); defaults to `host`.
    peer_address: str = ""
    # The VM's instance name (TPU workers publish it); IAP tunnels connect to instances by name.
    instance: str = ""

    def __str__(self) -> str:
        """How messages name a worker: `worker 1 (10.0.0.3:22)`."""
        return f"worker {self.index} ({self.address})"

    @property
    def label(self) -> str:
        return f"w{self.index}"

    @property
    def address(self) -> str:
        return str(HostPort(self.host, self.port))


def parse_worker_spec(spec: str, count: int) -> list[int]:
    """Worker indices selected by `spec`, sorted, each checked against the target's `count` workers.

    Bounds are checked on each part before any range is expanded: `0-99999999999` costs nothing.
    """
    text = spec.strip()
    if text == "all":
        return list(range(count))
    selected: set[int] = set()
    for part in text.split(","):
        match = _RANGE.fullmatch(part.strip())
        if not match:
            raise BadInput(f"bad worker selection {spec!r}: expected 'all', an index, a list like 0,2 or a range like 1-3")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise BadInput(f"bad worker range {part.strip()!r}: the end is below the start")
        if last >= count:
            raise BadInput(f"worker {max(first, count)} is out of range: the target has {count} worker(s), 0-{count - 1}")
        selected.update(range(first, last + 1))
    return sorted(selected)


def explicit_workers(target: Target) -> list[Worker]:
    """Workers from the target's explicit `hosts`, with `host_keys` pinned by position."""
    keys = list(target.host_keys) + [""] * (len(target.hosts) - len(target.host_keys))
    return [
        Worker(index=i, host=hp.host, port=hp.port, fingerprints=(keys[i],) if keys[i] else ())
        for i, hp in enumerate(target.host_ports())
    ]


def proxy_for(target: Target, worker: Worker, template: str | None = None) -> str | None:
    """The ProxyCommand that reaches `worker` (None: connect directly), its placeholders filled in,
    each as one quoted word (paramiko splits the command like a shell, without running one)."""
    template = target.proxy_template if template is None else template
    if not template:
        return None
    return fill_template(template, {"host": worker.host, "port": worker.port, "instance": worker.instance or worker.host,
                                    "worker": worker.index, "name": target.name, "project": target.project,
                                    "zone": target.zone})

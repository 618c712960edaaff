"""A fake Cloud TPU API (v2) on 127.0.0.1 that speaks the real REST wire protocol.

The real client talks to it unchanged:

    tpu_v2.TpuClient(transport="rest", credentials=AnonymousCredentials(),
                     client_options=ClientOptions(api_endpoint=api.endpoint))

Its nodes point at local sshd workers: each network endpoint carries a worker's loopback address, and
the guest attributes publish the worker's real host key and instance name, as a TPU VM's guest agent
does. Nodes and queued resources move through their states one step per poll, long-running
operations finish when their resource does, and every request is recorded so a test can prove that
nothing was changed. Errors can be injected by HTTP status, method and path.

The cloud's side of a spot VM's life is there too: `preempt` takes a node back (PREEMPTED, its queued
resource SUSPENDED, or the node deleted outright as a spot reclaim does) and calls `on_preempt`, where a
simulated VM stops its workers; `queue_wait_polls` keeps the next queued resources waiting for capacity;
a node created again gets a new node id and, through `provision`, new workers with new host keys.

Tests, the README demo and the simulated VM share it; the CLI never imports it.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.cloud import tpu_v2

DEFAULT_PROJECT = "sim-project"
DEFAULT_ZONES = ("us-central2-b", "us-east1-d", "europe-west4-a")
DEFAULT_RUNTIMES = ("tpu-ubuntu2204-base", "v2-alpha-tpuv5-lite", "v2-alpha-tpuv6e")
# Hosts per accelerator type: the number of network endpoints a real node of that type has.
HOSTS_PER_TYPE = {"v4-8": 1, "v4-16": 2, "v4-24": 3, "v4-32": 4, "v5litepod-8": 1, "v5litepod-16": 4,
                  "v6e-8": 1, "v6e-16": 4}
TPU_RUNTIME_PORT = 8470  # what network_endpoints[].port carries on real nodes (not SSH)
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
TYPE_PREFIX = "type.googleapis.com/"
QUEUE_STEPS = ("ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING")

_LOCATION = r"projects/(?P<project>[^/]+)/locations/(?P<zone>[^/:]+)"
ROUTES = [
    ("GET", r"projects/(?P<project>[^/]+)/locations", "list_locations"),
    ("GET", _LOCATION, "get_location"),
    ("GET", _LOCATION + r"/acceleratorTypes", "list_accelerator_types"),
    ("GET", _LOCATION + r"/runtimeVersions", "list_runtime_versions"),
    ("GET", _LOCATION + r"/nodes", "list_nodes"),
    ("POST", _LOCATION + r"/nodes", "create_node"),
    ("GET", _LOCATION + r"/nodes/(?P<name>[^/:]+)", "get_node"),
    ("DELETE", _LOCATION + r"/nodes/(?P<name>[^/:]+)", "delete_node"),
    ("PATCH", _LOCATION + r"/nodes/(?P<name>[^/:]+)", "update_node"),
    ("POST", _LOCATION + r"/nodes/(?P<name>[^/:]+):getGuestAttributes", "get_guest_attributes"),
    ("GET", _LOCATION + r"/queuedResources", "list_queued_resources"),
    ("POST", _LOCATION + r"/queuedResources", "create_queued_resource"),
    ("GET", _LOCATION + r"/queuedResources/(?P<name>[^/:]+)", "get_queued_resource"),
    ("DELETE", _LOCATION + r"/queuedResources/(?P<name>[^/:]+)", "delete_queued_resource"),
    ("GET", _LOCATION + r"/operations/(?P<name>[^/:]+)", "get_operation"),
]


@dataclass
class SimEndpoint:
    """One worker of a simulated node: its addresses, published host keys and instance name."""

    internal_ip: str
    external_ip: str = ""
    host_keys: dict[str, str] = field(default_factory=dict)  # key type -> base64 key blob
    hostname: str = ""

    @classmethod
    def of_sshd(cls, worker: Any, internal_ip: str = "", hostname: str = "") -> SimEndpoint:
        """A worker backed by an sshd (tpuctl.sim.sshd.SshdWorker): its address and its real host key."""
        return cls(internal_ip or worker.address, worker.address, host_keys_of(worker.host_key.with_suffix(".pub")),
                   hostname)


def host_keys_of(public_key: Path) -> dict[str, str]:
    """{key type: base64 blob} from an OpenSSH public key file, as the guest agent publishes it."""
    kind, blob = public_key.read_text().split()[:2]
    return {kind: blob}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]

    @property
    def changes_something(self) -> bool:
        """Reads are GET and the getGuestAttributes POST; everything else creates, deletes or updates."""
        return self.method != "GET" and not self.path.endswith(":getGuestAttributes")


@dataclass
class _Fault:
    code: int
    method: str | None
    path: str | None
    times: int
    message: str
    retry_delay_s: float | None

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and self.method in (None, method) and (self.path is None or self.path in path)


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Node:
    node: tpu_v2.Node
    endpoints: list[SimEndpoint]
    polls_left: int = 0  # polls until the pending transition (CREATING -> READY, DELETING -> gone)


@dataclass
class _Queued:
    resource: tpu_v2.QueuedResource
    steps: list[str]


@dataclass
class _Operation:
    name: str
    verb: str
    target: str
    result: Callable[[bool], dict[str, Any] | None]  # (poll) -> the response JSON once done, else None
    error: dict[str, Any] | None = None


class FakeTpuApi:
    """A TPU API for one project; start() it, then point the real client at `endpoint`."""

    def __init__(self, project: str = DEFAULT_PROJECT, zones: tuple[str, ...] = DEFAULT_ZONES,
                 accelerator_types: tuple[str, ...] = tuple(HOSTS_PER_TYPE),
                 runtimes: tuple[str, ...] = DEFAULT_RUNTIMES,
                 polls_per_step: int = 1, provision: Callable[[str, str], list[SimEndpoint]] | None = None,
                 on_metadata: Callable[[str, dict[str, str]], None] | None = None,
                 on_preempt: Callable[[str], None] | None = None):
        self.project = project
        self.zones = zones
        self.accelerator_types = accelerator_types
        self.runtimes = runtimes
        self.polls_per_step = polls_per_step
        self.provision = provision
        # The "guest agent": called with (node name, metadata) when a node is created or its metadata changes.
        self.on_metadata = on_metadata
        # The VMs going away: called with the node's name when preempt() takes it back.
        self.on_preempt = on_preempt
        # Extra polls a queued resource created from now on spends in WAITING_FOR_RESOURCES (no capacity).
        self.queue_wait_polls = 0
        self.requests: list[Recorded] = []
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._queued: dict[tuple[str, str], _Queued] = {}
        self._operations: dict[str, _Operation] = {}
        self._faults: list[_Fault] = []
        self._ids = itertools.count(6_502_000_000_000_000_001)
        self._op_ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # -- running -------------------------------------------------------------------------------

    def start(self) -> FakeTpuApi:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll interval makes stop() quick (shutdown waits for the loop to notice).
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTpuApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the fake API first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- what tests set up and inspect ---------------------------------------------------------

    def add_node(self, name: str, endpoints: list[SimEndpoint], zone: str | None = None, state: str = "READY",
                 accelerator_type: str = "v4-8", runtime_version: str = DEFAULT_RUNTIMES[0],
                 metadata: dict[str, str] | None = None, labels: dict[str, str] | None = None,
                 spot: bool = False) -> int:
        """A node as if created long ago; returns its node id."""
        node = tpu_v2.Node(accelerator_type=accelerator_type, runtime_version=runtime_version,
                           metadata=metadata or {}, labels=labels or {},
                           scheduling_config=tpu_v2.SchedulingConfig(spot=spot))
        with self._lock:
            record = self._install(zone or self.zones[0], name, node, endpoints)
            record.node.state = tpu_v2.Node.State[state]
            record.node.health = tpu_v2.Node.Health.HEALTHY if state == "READY" else 0
            return record.node.id

    def node(self, name: str, zone: str | None = None) -> tpu_v2.Node:
        with self._lock:
            return tpu_v2.Node(self._nodes[(zone or self.zones[0], name)].node)

    def has_node(self, name: str, zone: str | None = None) -> bool:
        with self._lock:
            return (zone or self.zones[0], name) in self._nodes

    def has_queued_resource(self, name: str, zone: str | None = None) -> bool:
        with self._lock:
            return (zone or self.zones[0], name) in self._queued

    def set_state(self, name: str, state: str, zone: str | None = None, symptom: str = "") -> None:
        """E.g. PREEMPTED: what the API reports after the cloud took a spot VM back."""
        with self._lock:
            record = self._nodes[(zone or self.zones[0], name)]
            record.node.state = tpu_v2.Node.State[state]
            if symptom:
                record.node.symptoms.append(tpu_v2.Symptom(details=symptom))

    def preempt(self, name: str, zone: str | None = None, reclaim: bool = False) -> None:
        """Take a spot or preemptible node back, as the cloud does: PREEMPTED, with a symptom; a queued
        resource's node also SUSPENDS its queued resource. With `reclaim` the node is deleted outright
        (what a spot reclaim may leave: no node at all). `on_preempt` runs last (the VMs stop)."""
        key = (zone or self.zones[0], name)
        with self._lock:
            record = self._nodes[key]
            owner = record.node.queued_resource.rsplit("/", 1)[-1]
            if owner and (key[0], owner) in self._queued:
                self._set_queued_state(self._queued[(key[0], owner)], "SUSPENDED")
            if reclaim:
                del self._nodes[key]
            else:
                record.node.state = tpu_v2.Node.State.PREEMPTED
                record.node.health = tpu_v2.Node.Health.HEALTH_UNSPECIFIED
                record.node.symptoms.append(tpu_v2.Symptom(details="The TPU was preempted."))
        if self.on_preempt is not None:
            self.on_preempt(name)

    def set_queued_state(self, name: str, state: str, zone: str | None = None) -> None:
        """E.g. FAILED: a queued resource the cloud gave up on."""
        with self._lock:
            self._set_queued_state(self._queued[(zone or self.zones[0], name)], state)

    def set_endpoints(self, name: str, endpoints: list[SimEndpoint], zone: str | None = None) -> None:
        """Change what a node publishes (addresses, host keys) without recreating it: same node id."""
        with self._lock:
            self._set_endpoints(self._nodes[(zone or self.zones[0], name)], endpoints)

    def recreate_node(self, name: str, endpoints: list[SimEndpoint], zone: str | None = None) -> int:
        """Delete and create the node again with the same spec, as after a preemption: a new node id."""
        key = (zone or self.zones[0], name)
        with self._lock:
            old = self._nodes.pop(key).node
            spec = tpu_v2.Node(accelerator_type=old.accelerator_type, runtime_version=old.runtime_version,
                               metadata=dict(old.metadata), labels=dict(old.labels),
                               scheduling_config=old.scheduling_config)
            record = self._install(key[0], name, spec, endpoints)
            record.node.state = tpu_v2.Node.State.READY
            return record.node.id

    def fail(self, code: int, method: str | None = None, path: str | None = None, times: int = 1,
             message: str = "", retry_delay_s: float | None = None) -> None:
        """Answer the next `times` requests matching method and path (a substring) with HTTP `code`."""
        with self._lock:
            self._faults.append(_Fault(code, method, path, times, message or f"injected {code}", retry_delay_s))

    def changes(self) -> list[Recorded]:
        """The recorded requests that created, deleted or updated something."""
        with self._lock:
            return [r for r in self.requests if r.changes_something]

    # -- resources -----------------------------------------------------------------------------

    def _parent(self, zone: str) -> str:
        return f"projects/{self.project}/locations/{zone}"

    def _install(self, zone: str, name: str, node: tpu_v2.Node, endpoints: list[SimEndpoint]) -> _Node:
        node.name = f"{self._parent(zone)}/nodes/{name}"
        node.id = next(self._ids)
        node.create_time = "2025-01-01T00:00:00Z"
        node.api_version = tpu_v2.Node.ApiVersion.V2
        record = _Node(node, [])
        self._set_endpoints(record, endpoints)
        self._nodes[(zone, name)] = record
        return record

    def _set_endpoints(self, record: _Node, endpoints: list[SimEndpoint]) -> None:
        record.endpoints = [replace(e, hostname=e.hostname or f"t1v-n-{record.node.id % 16**8:08x}-w-{i}")
                            for i, e in enumerate(endpoints)]
        del record.node.network_endpoints[:]
        record.node.network_endpoints.extend(
            tpu_v2.NetworkEndpoint(ip_address=e.internal_ip, port=TPU_RUNTIME_PORT,
                                   access_config=tpu_v2.AccessConfig(external_ip=e.external_ip) if e.external_ip
                                   else None)
            for e in record.endpoints)

    def _default_endpoints(self, name: str, accelerator_type: str) -> list[SimEndpoint]:
        if self.provision is not None:
            return self.provision(name, accelerator_type)
        count = HOSTS_PER_TYPE.get(accelerator_type, 1)
        base = len(self._nodes) * 8
        return [SimEndpoint(f"10.130.{base // 250}.{base % 250 + i + 2}") for i in range(count)]

    def _tick(self, zone: str, name: str) -> None:
        """One poll's worth of progress for a node in transition."""
        record = self._nodes.get((zone, name))
        if record is None or record.polls_left <= 0:
            return
        record.polls_left -= 1
        if record.polls_left > 0:
            return
        if record.node.state == tpu_v2.Node.State.CREATING:
            record.node.state = tpu_v2.Node.State.READY
            record.node.health = tpu_v2.Node.Health.HEALTHY
        elif record.node.state == tpu_v2.Node.State.DELETING:
            del self._nodes[(zone, name)]

    def _start_operation(self, zone: str, verb: str, target: str,
                         result: Callable[[bool], dict[str, Any] | None]) -> dict[str, Any]:
        op = _Operation(f"{self._parent(zone)}/operations/operation-{next(self._op_ids)}", verb, target, result)
        self._operations[op.name.rsplit("/", 1)[1]] = op
        return self._operation_json(op, poll=False)

    def _operation_json(self, op: _Operation, poll: bool = True) -> dict[str, Any]:
        """The operation as the API shows it; a `poll` (a GET) moves its resource one step."""
        metadata = {"@type": TYPE_PREFIX + "google.cloud.tpu.v2.OperationMetadata", "target": op.target,
                    "verb": op.verb, "apiVersion": "v2"}
        body: dict[str, Any] = {"name": op.name, "metadata": metadata, "done": False}
        response = op.result(poll) if op.error is None else None
        if op.error is not None:
            body.update(done=True, error=op.error)
        elif response is not None:
            body.update(done=True, response=response)
        return body

    def _node_record(self, project: str, zone: str, name: str) -> _Node:
        self._check_location(project, zone)
        record = self._nodes.get((zone, name))
        if record is None:
            raise ApiError(404, f"Resource '{self._parent(zone)}/nodes/{name}' was not found")
        return record

    def _check_location(self, project: str, zone: str | None = None) -> None:
        if project != self.project:
            raise ApiError(403, f"Permission 'tpu.nodes.list' denied on resource 'projects/{project}' "
                                "(or it may not exist)")
        if zone is not None and zone not in self.zones:
            raise ApiError(404, f"Location 'projects/{project}/locations/{zone}' was not found")

    # -- handlers: (project, zone, name, query, body) -> JSON ------------------------------------

    def list_locations(self, project: str, **_: Any) -> dict[str, Any]:
        self._check_location(project)
        return {"locations": [{"name": self._parent(z), "locationId": z} for z in self.zones]}

    def get_location(self, project: str, zone: str, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        return {"name": self._parent(zone), "locationId": zone}

    def list_accelerator_types(self, project: str, zone: str, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        return {"acceleratorTypes": [{"name": f"{self._parent(zone)}/acceleratorTypes/{t}", "type": t}
                                     for t in self.accelerator_types]}

    def list_runtime_versions(self, project: str, zone: str, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        return {"runtimeVersions": [{"name": f"{self._parent(zone)}/runtimeVersions/{v}", "version": v}
                                    for v in self.runtimes]}

    def list_nodes(self, project: str, zone: str, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        return {"nodes": [_json(r.node) for (z, _n), r in sorted(self._nodes.items()) if z == zone]}

    def get_node(self, project: str, zone: str, name: str, **_: Any) -> dict[str, Any]:
        record = self._node_record(project, zone, name)
        self._tick(zone, name)
        return _json(record.node)

    def create_node(self, project: str, zone: str, query: dict, body: dict, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        name = query.get("nodeId", [""])[0]
        if (zone, name) in self._nodes:
            raise ApiError(409, f"Resource '{self._parent(zone)}/nodes/{name}' already exists")
        node = tpu_v2.Node.from_json(json.dumps(body), ignore_unknown_fields=True)
        self._check_spec(node)
        self._create(zone, name, node)
        target = f"{self._parent(zone)}/nodes/{name}"
        return self._start_operation(zone, "create", target, lambda poll: self._ready_node_json(zone, name, poll))

    def _create(self, zone: str, name: str, node: tpu_v2.Node) -> _Node:
        record = self._install(zone, name, node, self._default_endpoints(name, node.accelerator_type))
        record.node.state = tpu_v2.Node.State.CREATING
        record.polls_left = self.polls_per_step
        if self.on_metadata is not None:
            self.on_metadata(name, dict(record.node.metadata))
        return record

    def _check_spec(self, node: tpu_v2.Node) -> None:
        if node.accelerator_type not in self.accelerator_types:
            raise ApiError(400, f"Accelerator type '{node.accelerator_type}' is not supported")
        if node.runtime_version not in self.runtimes:
            raise ApiError(400, f"Runtime version '{node.runtime_version}' is not supported")

    def _ready_node_json(self, zone: str, name: str, poll: bool) -> dict[str, Any] | None:
        if poll:
            self._tick(zone, name)
        record = self._nodes.get((zone, name))
        if record is None or record.node.state != tpu_v2.Node.State.READY:
            return None
        return {"@type": TYPE_PREFIX + "google.cloud.tpu.v2.Node", **_json(record.node)}

    def delete_node(self, project: str, zone: str, name: str, **_: Any) -> dict[str, Any]:
        record = self._node_record(project, zone, name)
        if record.node.queued_resource:
            raise ApiError(400, f"Node '{name}' was created by queued resource '{record.node.queued_resource}': "
                                "delete the queued resource instead")
        return self._start_deleting(zone, name, record)

    def _start_deleting(self, zone: str, name: str, record: _Node) -> dict[str, Any]:
        record.node.state = tpu_v2.Node.State.DELETING
        record.polls_left = self.polls_per_step
        target = f"{self._parent(zone)}/nodes/{name}"
        return self._start_operation(zone, "delete", target, lambda poll: self._gone_json(zone, name, poll))

    def _gone_json(self, zone: str, name: str, poll: bool) -> dict[str, Any] | None:
        if poll:
            self._tick(zone, name)
        if (zone, name) in self._nodes:
            return None
        return {"@type": TYPE_PREFIX + "google.protobuf.Empty"}

    def update_node(self, project: str, zone: str, name: str, query: dict, body: dict, **_: Any) -> dict[str, Any]:
        record = self._node_record(project, zone, name)
        paths = [p for item in query.get("updateMask", []) for p in item.split(",") if p]
        change = tpu_v2.Node.from_json(json.dumps(body), ignore_unknown_fields=True)
        unsupported = [p for p in paths if p not in ("metadata", "labels", "description")]
        if not paths or unsupported:
            raise ApiError(400, f"update_mask must name metadata, labels or description, received {paths}")
        for path in paths:
            setattr(record.node, path, getattr(change, path))
        if "metadata" in paths and self.on_metadata is not None:
            self.on_metadata(name, dict(record.node.metadata))
        response = {"@type": TYPE_PREFIX + "google.cloud.tpu.v2.Node", **_json(record.node)}
        return self._start_operation(zone, "update", record.node.name, lambda poll: response)

    def get_guest_attributes(self, project: str, zone: str, name: str, body: dict, **_: Any) -> dict[str, Any]:
        record = self._node_record(project, zone, name)
        query_path = body.get("queryPath", "")
        wanted = [int(w) for w in body.get("workerIds", [])] or range(len(record.endpoints))
        return {"guestAttributes": [
            {"queryPath": query_path, "queryValue": {"items": _attribute_items(record.endpoints[w], query_path)}}
            for w in wanted if w < len(record.endpoints)]}

    def list_queued_resources(self, project: str, zone: str, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        return {"queuedResources": [_json(q.resource) for (z, _n), q in sorted(self._queued.items()) if z == zone]}

    def create_queued_resource(self, project: str, zone: str, query: dict, body: dict, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        name = query.get("queuedResourceId", [""])[0]
        if (zone, name) in self._queued:
            raise ApiError(409, f"Resource '{self._parent(zone)}/queuedResources/{name}' already exists")
        resource = tpu_v2.QueuedResource.from_json(json.dumps(body), ignore_unknown_fields=True)
        for spec in resource.tpu.node_spec:
            self._check_spec(spec.node)
        resource.name = f"{self._parent(zone)}/queuedResources/{name}"
        resource.create_time = "2025-01-01T00:00:00Z"
        waits = {"WAITING_FOR_RESOURCES": self.queue_wait_polls}
        queued = _Queued(resource, [s for s in QUEUE_STEPS for _ in range(self.polls_per_step + waits.get(s, 0))])
        self._set_queued_state(queued, queued.steps.pop(0))
        self._queued[(zone, name)] = queued
        return self._start_operation(zone, "create", resource.name, lambda poll: {
            "@type": TYPE_PREFIX + "google.cloud.tpu.v2.QueuedResource", **_json(resource)})

    def get_queued_resource(self, project: str, zone: str, name: str, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        queued = self._queued.get((zone, name))
        if queued is None:
            raise ApiError(404, f"Resource '{self._parent(zone)}/queuedResources/{name}' was not found")
        shown = _json(queued.resource)
        self._advance_queued(zone, queued)  # after answering, so that every state is seen once
        return shown

    def _advance_queued(self, zone: str, queued: _Queued) -> None:
        """One poll: the next queueing step; at PROVISIONING the node is created; ACTIVE once it is READY."""
        state = queued.resource.state.state
        if state in (tpu_v2.QueuedResourceState.State.PROVISIONING, tpu_v2.QueuedResourceState.State.ACTIVE):
            spec = queued.resource.tpu.node_spec[0]
            self._tick(zone, spec.node_id)
            record = self._nodes.get((zone, spec.node_id))
            if record is not None and record.node.state == tpu_v2.Node.State.READY:
                self._set_queued_state(queued, "ACTIVE")
            return
        if queued.steps:
            self._set_queued_state(queued, queued.steps.pop(0))
        if queued.resource.state.state == tpu_v2.QueuedResourceState.State.PROVISIONING:
            for spec in queued.resource.tpu.node_spec:
                node = tpu_v2.Node(spec.node)
                node.queued_resource = queued.resource.name
                self._create(zone, spec.node_id, node)

    @staticmethod
    def _set_queued_state(queued: _Queued, state: str) -> None:
        queued.resource.state = tpu_v2.QueuedResourceState(state=tpu_v2.QueuedResourceState.State[state])

    def delete_queued_resource(self, project: str, zone: str, name: str, query: dict, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        queued = self._queued.get((zone, name))
        if queued is None:
            raise ApiError(404, f"Resource '{self._parent(zone)}/queuedResources/{name}' was not found")
        node_ids = [s.node_id for s in queued.resource.tpu.node_spec if (zone, s.node_id) in self._nodes]
        if node_ids and query.get("force", ["false"])[0] != "true":
            raise ApiError(400, f"Queued resource '{name}' still has node(s) {', '.join(node_ids)}: delete them "
                                "first or set force")
        for node_id in node_ids:
            del self._nodes[(zone, node_id)]
        self._set_queued_state(queued, "DELETING")
        del self._queued[(zone, name)]
        return self._start_operation(zone, "delete", queued.resource.name,
                                     lambda poll: {"@type": TYPE_PREFIX + "google.protobuf.Empty"})

    def get_operation(self, project: str, zone: str, name: str, **_: Any) -> dict[str, Any]:
        self._check_location(project, zone)
        op = self._operations.get(name)
        if op is None:
            raise ApiError(404, f"Operation '{self._parent(zone)}/operations/{name}' was not found")
        return self._operation_json(op)

    # -- dispatch ------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, raw_body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one request."""
        parts = urlsplit(raw_path)
        path = parts.path.removeprefix("/v2/")
        query = parse_qs(parts.query)
        body = json.loads(raw_body) if raw_body.strip() else {}
        with self._lock:
            self.requests.append(Recorded(method, path, query, body))
            fault = next((f for f in self._faults if f.matches(method, path)), None)
            if fault is not None:
                fault.times -= 1
                return fault.code, _error_json(fault.code, fault.message, fault.retry_delay_s)
            for route_method, pattern, handler in ROUTES:
                match = re.fullmatch(pattern, path)
                if match and route_method == method:
                    try:
                        return 200, getattr(self, handler)(query=query, body=body, **match.groupdict())
                    except ApiError as exc:
                        return exc.code, _error_json(exc.code, exc.message)
        return 404, _error_json(404, f"no such method: {method} /v2/{path}")


def authorized_keys_for(metadata: dict[str, str], user: str) -> str:
    """The authorized_keys text a guest agent derives for `user` from the ssh-keys metadata (user:key lines)."""
    lines = [line.partition(":")[2].strip() for line in metadata.get("ssh-keys", "").splitlines()
             if line.partition(":")[0].strip() == user]
    return "".join(f"{line}\n" for line in lines if line)


def _attribute_items(endpoint: SimEndpoint, query_path: str) -> list[dict[str, str]]:
    items = [{"namespace": "hostkeys", "key": kind, "value": blob} for kind, blob in endpoint.host_keys.items()]
    items.append({"namespace": "", "key": "hostname", "value": endpoint.hostname})
    return [i for i in items if f"{i['namespace']}/{i['key']}".startswith(query_path.lstrip("/"))]


def _json(message: Any) -> dict[str, Any]:
    return json.loads(type(message).to_json(message, use_integers_for_enums=False, indent=None))


def _error_json(code: int, message: str, retry_delay_s: float | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}
    if retry_delay_s is not None:
        error["details"] = [{"@type": TYPE_PREFIX + "google.rpc.RetryInfo", "retryDelay": f"{retry_delay_s}s"}]
    return {"error": error}


def _handler_for(api: FakeTpuApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, body = api.handle(self.command, self.path, self.rfile.read(length))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            """Quiet: the recorded requests are the log."""

    return Handler

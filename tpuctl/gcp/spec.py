"""What `tpuctl up` asks for, checked before anything is created.

Checks come in two rounds, both before any call that changes something: `check_locally` needs no
network (names, labels, flags that exclude each other), `check_with_api` asks the API with reads
only (is the zone a TPU zone of the project, are the accelerator type and runtime version offered
there, does the name already exist). Every refusal is a BadInput: exit 2, nothing created.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.cloud import tpu_v2

from tpuctl.config import Target
from tpuctl.console import BadInput
from tpuctl.gcp.api import TpuApi, require
from tpuctl.pairs import ANY_KEY, parse_pairs

_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_ACCELERATOR = re.compile(r"[a-z][a-z0-9]*-[0-9]+")
_NETWORK = re.compile(r"(?:projects/[a-z0-9.:-]+/(?:global|regions/[a-z0-9-]+)/(?:networks|subnetworks)/)?"
                      r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_PUBLIC_KEY_TYPES = ("ssh-", "ecdsa-", "sk-")
MAX_LABELS = 64
SHOWN_CHOICES = 12


@dataclass(frozen=True)
class NodeRequest:
    """A TPU VM to create, directly or (queued) through a queued resource."""

    name: str
    accelerator_type: str
    runtime_version: str
    spot: bool = False
    preemptible: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    subnetwork: str = ""
    external_ips: bool = True
    ssh_key: str = ""  # a `user:key` line for the node's ssh-keys metadata, when asked for
    queued: bool = False

    def node(self) -> tpu_v2.Node:
        # A queued resource carries spot itself; its node spec must not.
        scheduling = tpu_v2.SchedulingConfig(spot=self.spot and not self.queued, preemptible=self.preemptible)
        return tpu_v2.Node(
            accelerator_type=self.accelerator_type, runtime_version=self.runtime_version, labels=dict(self.labels),
            scheduling_config=scheduling, metadata={"ssh-keys": self.ssh_key} if self.ssh_key else {},
            network_config=tpu_v2.NetworkConfig(network=self.network, subnetwork=self.subnetwork,
                                                enable_external_ips=self.external_ips))

    def queued_resource(self, parent: str) -> tpu_v2.QueuedResource:
        spec = tpu_v2.QueuedResource.Tpu.NodeSpec(parent=parent, node_id=self.name, node=self.node())
        return tpu_v2.QueuedResource(tpu=tpu_v2.QueuedResource.Tpu(node_spec=[spec]),
                                     spot=tpu_v2.QueuedResource.Spot() if self.spot else None)


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """`--label KEY=VALUE` options; the keys and values are checked by check_labels."""
    return parse_pairs(pairs, "--label", ", e.g. --label team=rl", ANY_KEY)


def check_locally(target: Target, request: NodeRequest) -> None:
    """Everything that can be refused without asking the API."""
    require(target, "name", "the TPU VM's name")
    require(target, "project", "a Google Cloud project ID")
    require(target, "zone", "a zone such as 'us-central2-b'")
    if not request.accelerator_type:
        raise BadInput("accelerator_type: not set; expected e.g. v4-8 (--accelerator-type or accelerator_type "
                       "in tpuctl.toml)")
    if not _ACCELERATOR.fullmatch(request.accelerator_type):
        raise BadInput(f"accelerator_type: expected a type such as v4-8 or v5litepod-16, "
                       f"received {request.accelerator_type!r}")
    if not request.runtime_version:
        raise BadInput("runtime_version: not set; expected e.g. tpu-ubuntu2204-base (--runtime-version or "
                       "runtime_version in tpuctl.toml)")
    if request.spot and request.preemptible:
        raise BadInput("--spot and --preemptible exclude each other: choose one (spot is the newer kind)")
    if request.queued and request.preemptible:
        raise BadInput("--preemptible does not apply to a queued resource: use --queued --spot")
    check_labels(request.labels)
    for flag, value in (("--network", request.network), ("--subnetwork", request.subnetwork)):
        if value and not _NETWORK.fullmatch(value):
            raise BadInput(f"bad {flag} {value!r}: expected a name such as 'default' or "
                           f"projects/P/{'global/networks' if flag == '--network' else 'regions/R/subnetworks'}/NAME")


def check_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise BadInput(f"labels: expected at most {MAX_LABELS}, received {len(labels)}")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise BadInput(f"bad label key {key!r}: expected a lowercase letter, then up to 62 lowercase letters, "
                           "digits, '_' or '-'")
        if not _LABEL_VALUE.fullmatch(value):
            raise BadInput(f"bad value {value!r} for label {key!r}: expected up to 63 lowercase letters, digits, "
                           "'_' or '-'")


def check_with_api(api: TpuApi, request: NodeRequest) -> None:
    """Refuse what the API would refuse, using reads only."""
    zones = api.zones()
    if api.zone not in zones:
        raise BadInput(f"zone {api.zone!r} offers no TPUs to project {api.project!r}: expected one of "
                       f"{_choices(zones)}")
    types = api.accelerator_types()
    if request.accelerator_type not in types:
        raise BadInput(f"accelerator type {request.accelerator_type!r} is not offered in {api.zone}: expected one "
                       f"of {_choices(types)}")
    versions = api.runtime_versions()
    if request.runtime_version not in versions:
        raise BadInput(f"runtime version {request.runtime_version!r} is not offered in {api.zone}: expected one of "
                       f"{_choices(versions)}")
    existing = api.find_node(request.name)
    if existing is not None:
        raise BadInput(f"{api.label(request.name)} already exists ({existing.state.name}): use it, or delete it "
                       "first with tpuctl down")
    if request.queued and api.find_queued(request.name) is not None:
        raise BadInput(f"queued resource {request.name!r} already exists in {api.zone}: delete it first with "
                       "tpuctl down")


def _choices(values: list[str]) -> str:
    shown = ", ".join(values[:SHOWN_CHOICES])
    return shown + (f", ... ({len(values)} in all)" if len(values) > SHOWN_CHOICES else "") if values else "(none)"


def ssh_key_entry(target: Target) -> str:
    """`user:TYPE BLOB user`: the target's public key as gcloud writes it into the ssh-keys metadata."""
    identity = target.identity_file
    if not identity:
        raise BadInput("identity_file: not set; adding an SSH key needs the key pair tpuctl connects with "
                       "(identity_file in tpuctl.toml or TPUCTL_IDENTITY_FILE)")
    public = Path(identity + ".pub").expanduser()
    try:
        tokens = public.read_text().split()
    except OSError:
        raise BadInput(f"identity_file: no public key at {public}: expected the .pub file next to "
                       f"{identity}") from None
    if len(tokens) < 2 or not tokens[0].startswith(_PUBLIC_KEY_TYPES):
        raise BadInput(f"{public}: expected an OpenSSH public key such as 'ssh-ed25519 AAAA...'")
    return f"{target.user}:{tokens[0]} {tokens[1]} {target.user}"

"""Host keys of TPU VM workers, pinned locally per node id.

The TPU API publishes each worker's SSH host keys in its guest attributes. The first time tpuctl
meets a node it pins those keys (the API is an authenticated channel, which is how gcloud trusts
them too). Later the pins, not the API, decide which keys SSH accepts. A node keeps its id for
life, so a different id under the same name is a recreated VM: its keys are re-pinned, and tpuctl
says so. A different key under the SAME id is refused: nothing explains it but an attack or a
reinstalled VM, and the user must decide (`tpuctl forget-keys` drops the pins after checking).

The pins live in one JSON file under the user's config folder, keyed by the node's resource name
(projects/P/locations/Z/nodes/NAME); TPUCTL_KNOWN_TPUS names another file (the tests use that).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tpuctl.console import TpuctlError

PIN_FILE_ENV = "TPUCTL_KNOWN_TPUS"
Keys = tuple[str, ...]


def pin_file() -> Path:
    explicit = os.environ.get(PIN_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "tpuctl" / "known_tpus.json"


@dataclass(frozen=True)
class NodePins:
    node_id: str
    workers: tuple[Keys, ...]  # per worker index; an empty tuple: nothing published yet


class HostKeyChanged(TpuctlError):
    """The API publishes a different key for a worker of the same node: refuse, change nothing."""


def reconcile(label: str, stored: NodePins | None, node_id: str,
              published: Sequence[Keys]) -> tuple[NodePins, str | None]:
    """The pins to use now and what to tell the user about them (None: nothing new)."""
    fresh = NodePins(node_id, tuple(tuple(keys) for keys in published))
    count = sum(1 for keys in fresh.workers if keys)
    if stored is None:
        return fresh, (f"pinned the host keys of {count} worker(s) of {label} (node id {node_id}) "
                       "from the TPU API" if count else None)
    if stored.node_id != node_id:
        return fresh, (f"{label} was recreated (node id {stored.node_id} -> {node_id}): re-pinned the host keys "
                       f"of {count} worker(s) from the TPU API")
    merged, added = [], []
    for index, keys in enumerate(fresh.workers):
        old = stored.workers[index] if index < len(stored.workers) else ()
        unexpected = [key for key in keys if key not in old]
        if old and unexpected:
            raise HostKeyChanged(
                f"{label} (node id {node_id}): the TPU API now publishes host key {unexpected[0]} for worker {index}, "
                f"but {', '.join(old)} is pinned and the node was not recreated: refusing to connect. If the change "
                f"is expected, verify the key out of band, then drop the old pins with `tpuctl forget-keys`")
        merged.append(old or keys)
        if keys and not old:
            added.append(str(index))
    note = f"pinned the host keys of worker(s) {', '.join(added)} of {label}" if added else None
    return NodePins(node_id, tuple(merged)), note


class PinStore:
    """The pin file: read on demand, rewritten atomically on change."""

    def __init__(self, path: Path | None = None):
        self.path = path or pin_file()

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TpuctlError(f"cannot read the host-key pins in {self.path}: {exc}; fix or delete the file") from None
        if not isinstance(data, dict) or not isinstance(data.get("nodes", {}), dict):
            raise TpuctlError(f"cannot read the host-key pins in {self.path}: expected {{\"nodes\": {{...}}}}; "
                              "fix or delete the file")
        return data.get("nodes", {})

    def get(self, key: str) -> NodePins | None:
        entry = self._load().get(key)
        if not isinstance(entry, dict):
            return None
        return NodePins(str(entry.get("node_id", "")), tuple(tuple(keys) for keys in entry.get("workers", [])))

    def put(self, key: str, pins: NodePins) -> None:
        nodes = self._load()
        nodes[key] = {"node_id": pins.node_id, "workers": [list(keys) for keys in pins.workers]}
        self._write(nodes)

    def forget(self, key: str) -> bool:
        nodes = self._load()
        if nodes.pop(key, None) is None:
            return False
        self._write(nodes)
        return True

    def _write(self, nodes: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, prefix=".known_tpus.", delete=False) as handle:
            json.dump({"nodes": nodes}, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(handle.name, self.path)

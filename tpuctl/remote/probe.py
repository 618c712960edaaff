"""`tpuctl verify-env`: one probe per worker (scripts/probe.sh), then the checks across workers and against the pins."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tpuctl.config import Target
from tpuctl.remote.render import render

PROBE_MARK = "TPUCTL_PROBE "
VERSION_KEYS = ("python", "jax", "jaxlib", "libtpu", "sglang-jax")


def probe_script(target: Target) -> str:
    return render("probe", venv=target.venv, conda_env=target.conda_env)


def parse_probe(text: str) -> dict[str, object]:
    for line in text.splitlines():
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):])
    raise ValueError("the probe printed no result")


def version_matches(actual: object, pin: str) -> bool:
    """A pin matches the same version or a longer one at a dot boundary: 3.12 matches 3.12.1."""
    return isinstance(actual, str) and (actual == pin or actual.startswith(pin + "."))


@dataclass
class EnvReport:
    infos: Mapping[int, Mapping[str, object]]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_envs(infos: Mapping[int, Mapping[str, object]], expect_backend: str,
               pins: Mapping[str, str]) -> EnvReport:
    """Each worker against the expected backend and pins, and the workers against each other."""
    report = EnvReport(infos)
    for index, info in infos.items():
        if info.get("error"):
            report.problems.append(f"worker {index}: jax failed: {info['error']}")
        elif info.get("backend") != expect_backend:
            report.problems.append(f"worker {index}: backend {info.get('backend')!r}, expected {expect_backend!r}")
        for key, pin in pins.items():
            if not version_matches(info.get(key), pin):
                shown = info.get(key) or "not installed"
                report.problems.append(f"worker {index}: {key} {shown}, expected {pin}")
    report.problems.extend(_disagreements(infos, (*VERSION_KEYS, "backend", "device_count", "local_device_count")))
    return report


def _disagreements(infos: Mapping[int, Mapping[str, object]], keys: Sequence[str]) -> list[str]:
    problems = []
    for key in keys:
        by_value: dict[str, list[int]] = {}
        for index, info in infos.items():
            by_value.setdefault(str(info.get(key)), []).append(index)
        if len(by_value) > 1:
            parts = ", ".join(f"{value} (workers {', '.join(map(str, idx))})" for value, idx in by_value.items())
            problems.append(f"workers disagree on {key}: {parts}")
    return problems

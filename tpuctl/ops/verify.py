"""Verify the environment: one probe per worker (scripts/probe.sh), then the checks across workers
and against the pinned versions (python, jax, jaxlib, sglang-jax) and the expected jax backend."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tpuctl.config import Target
from tpuctl.console import TpuctlError
from tpuctl.ops.common import Step
from tpuctl.ops.runs import python_env
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker

PROBE_MARK = "TPUCTL_PROBE "
PROBE_TIMEOUT_S = 300.0
VERSION_KEYS = ("python", "jax", "jaxlib", "libtpu", "sglang-jax")


def probe_script(target: Target) -> RenderedScript:
    return render("probe", **python_env(target))


def verify_plan(target: Target, workers: list[Worker]) -> list[Step]:
    return [(worker, probe_script(target)) for worker in workers]


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


def probe(session: Session, target: Target, worker: Worker) -> dict[str, object]:
    result = session.exec(worker, probe_script(target), "the environment probe", timeout=PROBE_TIMEOUT_S)
    try:
        return parse_probe(result.out)
    except ValueError:
        raise TpuctlError(f"worker {worker.index}: the environment probe printed no result: {result.failure}") from None


@dataclass(frozen=True)
class VerifyReport:
    expect_backend: str
    pins: Mapping[str, str]
    outcomes: list[Outcome[dict[str, object]]]
    env: EnvReport  # the checks over the workers that answered

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes) and self.env.ok


def verify(session: Session, target: Target, workers: list[Worker], expect_backend: str) -> VerifyReport:
    outcomes = session.each(workers, lambda w: probe(session, target, w))
    env = check_envs({o.worker.index: o.value for o in outcomes if o.ok}, expect_backend, target.expect_versions)
    return VerifyReport(expect_backend, dict(target.expect_versions), outcomes, env)

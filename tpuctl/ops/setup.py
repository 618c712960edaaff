"""Setup: the training environment on every worker, from the synced checkout (scripts/setup.sh).

A venv target gets its venv, with the Python the target asks for (uv finds it or downloads it); a
conda_env target uses the existing env. The project is then installed with the target's extra
(`setup_extra`, the pins of pyproject.toml) unless every requirement is met already: a second run on
a ready worker only checks. `tpuctl setup` ends with verify-env; so does babysit's preparation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tpuctl.config import Target
from tpuctl.console import TpuctlError
from tpuctl.ops.common import Step
from tpuctl.ops.runs import python_env
from tpuctl.pairs import fields, values_of
from tpuctl.remote.render import RenderedScript, render
from tpuctl.transport import Outcome, Session
from tpuctl.workers import Worker

if TYPE_CHECKING:
    from tpuctl.ops.verify import VerifyReport

SETUP_TIMEOUT_S = 1800.0  # a first install of the TPU stack downloads a few GB


def setup_script(target: Target) -> RenderedScript:
    return render("setup", repo=target.remote_repo, extra=target.setup_extra, python_version=target.python_version,
                  **python_env(target))


def setup_plan(target: Target, workers: list[Worker]) -> list[Step]:
    return [(worker, setup_script(target)) for worker in workers]


@dataclass(frozen=True)
class Prepared:
    """One worker's environment after setup: its Python, and what setup had to do."""

    python: str
    created: bool  # the venv was created
    installed: bool  # the project was installed (False: every requirement was met already)

    @property
    def summary(self) -> str:
        done = [what for what, did in (("created the venv", self.created), ("installed the project", self.installed))
                if did]
        return f"Python {self.python}: " + (", ".join(done) if done else "ready, nothing to do")


def parse_setup(text: str) -> Prepared:
    problems = values_of(text, "problem")
    if problems:
        raise TpuctlError(problems[0])
    found = fields(text)
    if found.get("action") not in ("ready", "installed"):
        raise TpuctlError(f"setup printed no result: {text.strip()[-300:] or '(nothing)'}")
    return Prepared(found.get("python", "?"), found.get("created") == "yes", found["action"] == "installed")


def setup(session: Session, target: Target, workers: list[Worker],
          on_done: Callable[[Worker, Prepared], None] | None = None) -> list[Outcome[Prepared]]:
    """Set up every worker at once; one outcome per worker. `on_done` hears of each worker as it finishes."""
    script = setup_script(target)

    def set_up(worker: Worker) -> Prepared:
        prepared = parse_setup(session.exec(worker, script, "setup", timeout=SETUP_TIMEOUT_S).out)
        if on_done is not None:
            on_done(worker, prepared)
        return prepared

    return session.each(workers, set_up)


def missing_environment(report: VerifyReport) -> bool:
    """Whether verify-env failed for want of an environment (what setup makes), not for a wrong one: the
    venv or conda env was not found (scripts/lib/python.sh), or jax is not installed."""
    return any((not o.ok and " not found" in (o.error or "")) or (o.ok and not o.value.get("jax"))
               for o in report.outcomes)

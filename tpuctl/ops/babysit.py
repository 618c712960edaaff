"""Babysit: keep one command running on a (spot) TPU VM until it has exited 0: a reconcile loop.

Each turn observes the node through the TPU API (state, queued resource) and, on a READY node, the
run on every worker (scripts/status.sh); tpuctl.ops.recovery.decide picks the one action; the turn
does it and appends what it saw and did to the events file (tpuctl.ops.events). All state lives in
the cloud, in the run's files on the workers and in the events file: a babysit killed and started
again never starts a second run (a run it launched, found running, is watched) and never counts a
preemption twice.

Recreating a preempted node uses the spec recorded when babysit began (accelerator type, runtime
version, spot / preemptible / queued, labels, the ssh-keys metadata). The new node has a new node id
and new host keys: discovery re-pins them from the guest attributes. Then, as on first start: sync,
setup, secrets push (when the .env exists), verify-env, launch. The trainer resumes from its latest
checkpoint, which must therefore live in storage that outlives the VM (`checkpoint_problem`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tpuctl.config import Target
from tpuctl.console import BadInput, TpuctlError
from tpuctl.gcp.pins import HostKeyChanged
from tpuctl.gcp.spec import NodeRequest
from tpuctl.ops import events
from tpuctl.ops.recovery import (
    ABSENT,
    SUSPECT,
    UNREACHABLE,
    Action,
    Decision,
    History,
    Limits,
    Observation,
    decide,
)
from tpuctl.pairs import leading_assignments
from tpuctl.transport import Session
from tpuctl.workers import Worker

# A READY node that cannot be prepared this many turns in a row ends babysit (a new VM's sshd may take a
# minute or two after READY: the turns in between fail to connect).
MAX_PREPARE_FAILURES = 5
MAX_TURN_ERRORS = 20  # turns in a row whose observation failed (API or SSH errors) before babysit ends
STOP_GRACE_S = 30.0


def checkpoint_problem(command: Sequence[str]) -> str | None:
    """Why the command's checkpoints would not survive a recreated VM, for a trainer command; None when
    they would (a gs:// checkpoint.dir) or the command is not the trainer (its storage is its own)."""
    argv = list(command)[len(leading_assignments(command)):]
    is_trainer = any(word == "trainer" or word.endswith("/trainer") for word in argv[:1]) or (
        "-m" in argv[:3] and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["trainer"])
    if not is_trainer:
        return None
    settings = [argv[i + 1] if word == "--set" and i + 1 < len(argv) else word.removeprefix("--set=")
                for i, word in enumerate(argv) if word == "--set" or word.startswith("--set=")]
    chosen = [value.partition("=")[2] for value in settings if value.partition("=")[0].strip() == "checkpoint.dir"]
    where = chosen[-1] if chosen else ""
    if where.startswith("gs://") and len(where) > len("gs://"):
        return None
    shown = repr(where) if where else "nothing (the default, <out_dir>/checkpoints on the VM's disk)"
    return (f"checkpoint.dir: expected a gs:// bucket that outlives the VM (a recreated VM has a fresh disk), "
            f"received {shown}: add --set checkpoint.dir=gs://BUCKET/PATH to the command")


def node_spec(api: Any, name: str) -> NodeRequest:
    """What to create again after a preemption: the live node's spec (and its queued resource's)."""
    node = api.get_node(name)
    queued = node.queued_resource.rsplit("/", 1)[-1] if node.queued_resource else ""
    resource = api.find_queued(queued) if queued else None
    network = node.network_config
    return NodeRequest(name=name, accelerator_type=node.accelerator_type, runtime_version=node.runtime_version,
                       spot=bool(node.scheduling_config.spot or (resource is not None and "spot" in resource)),
                       preemptible=bool(node.scheduling_config.preemptible), labels=dict(node.labels),
                       network=network.network, subnetwork=network.subnetwork,
                       external_ips=bool(network.enable_external_ips) if network.network else True,
                       ssh_key=node.metadata.get("ssh-keys", ""), queued=bool(queued))


def spec_record(spec: NodeRequest) -> dict[str, Any]:
    return {"accelerator_type": spec.accelerator_type, "runtime_version": spec.runtime_version, "spot": spec.spot,
            "preemptible": spec.preemptible, "queued": spec.queued, "labels": dict(spec.labels),
            "network": spec.network, "subnetwork": spec.subnetwork, "external_ips": spec.external_ips,
            "ssh_keys": spec.ssh_key}


def spec_of(record: dict[str, Any], name: str) -> NodeRequest:
    return NodeRequest(name=name, accelerator_type=record["accelerator_type"], runtime_version=record["runtime_version"],
                       spot=record["spot"], preemptible=record["preemptible"], labels=record["labels"],
                       network=record["network"], subnetwork=record["subnetwork"],
                       external_ips=record["external_ips"], ssh_key=record["ssh_keys"], queued=record["queued"])


@dataclass
class Goal:
    """What babysit works toward, as recorded in the events file's `goal` event."""

    name: str
    command: list[str]
    limits: Limits
    env_file: Path
    poll_s: float = 60.0
    follow_branch: bool = False  # resume on whatever origin/BRANCH holds after a preemption (else: the first launch's commit)


@dataclass
class Seen:
    """A turn's observation, and what the turn needs to act on it."""

    observation: Observation
    workers: list[Worker] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # each worker's run log (a path on the worker), "" for none


class Babysitter:
    """The loop. `show` receives every event as it is recorded (the command renders it)."""

    def __init__(self, target: Target, goal: Goal, path: Path, show: Callable[[dict[str, Any]], None]):
        self.target = target
        self.goal = goal
        self.path = path
        self.show = show
        self.prepare_failures = 0
        self.last_step = ""  # the step number of the run's last step line on worker 0, for display
        self.failure_tail: list[str] = []  # the end of the failed run's log, for display (not in the events)
        self.last_observed: dict[str, Any] | None = None  # what the last `observed` event said
        self.synced_head = ""  # the commit the last sync left the workers at
        self.streak: tuple[str, str, float] = ("", "", 0.0)  # a suspect picture: kind, node id, since (monotonic)

    def record(self, event: str, **fields: Any) -> None:
        self.show(events.append(self.path, event, **fields))

    def begin(self, spec: NodeRequest) -> None:
        """Record the goal, or check that the events file's goal is this one (a restarted babysit)."""
        earlier = [e for e in events.read(self.path) if e["event"] == "goal"]
        if earlier and earlier[-1].get("command") != self.goal.command:
            raise BadInput(f"{self.path} belongs to another command ({' '.join(earlier[-1].get('command', []))!r}): "
                           f"choose another --name, or remove that file to start over")
        finished = [e for e in events.read(self.path) if e["event"] == "done"]
        if earlier and finished and finished[-1]["time"] > earlier[-1]["time"]:
            raise BadInput(f"{self.path}: this command already finished ({finished[-1].get('result')}): choose another "
                           f"--name, or remove that file to run it again")
        if not earlier:
            self.record("goal", command=self.goal.command, node=spec_record(spec), name=self.goal.name,
                        max_preemptions=self.goal.limits.max_preemptions, max_failures=self.goal.limits.max_failures)
        else:
            self.record("resumed", reason="babysit started again: picking up from the events file")

    def spec(self) -> NodeRequest:
        goal = next(e for e in reversed(events.read(self.path)) if e["event"] == "goal")
        return spec_of(goal["node"], self.target.name)

    def run(self) -> int:
        """Turns until the goal is reached or given up; returns babysit's exit code.

        An error of one turn (the API unavailable, a node preempted between two reads, a recreate refused)
        is recorded and the next turn looks again; MAX_TURN_ERRORS in a row end babysit. A changed host key
        or refused input is never retried.
        """
        errors = 0
        while True:
            try:
                code = self.turn()
                errors = 0
            except (BadInput, HostKeyChanged):
                raise
            except TpuctlError as exc:
                errors += 1
                self.record("error", error=str(exc), attempt=errors)
                if errors >= MAX_TURN_ERRORS:
                    self.record("done", result="fail", exit_code=1, step=self.last_step)
                    return 1
                time.sleep(self.goal.poll_s)
                continue
            if code is not None:
                return code

    def turn(self) -> int | None:
        """Observe, decide, act: the exit code once babysit is done, else None."""
        seen = self.observe()
        node_id = seen.observation.node_id
        decision = decide(seen.observation, self.timed(events.history(events.read(self.path)), node_id),
                          self.goal.limits)
        self.note_streak(decision.streak, node_id)
        observed = observation_record(seen.observation)
        if observed != self.last_observed:
            self.record("observed", **observed, step=self.last_step)
            self.last_observed = observed
        return self.act(decision, seen)

    def timed(self, history: History, node_id: str) -> History:
        """`history` with the seconds the current streak (recovery.SUSPECT / UNREACHABLE) has lasted on this node."""
        kind, node, since = self.streak
        lasted = time.monotonic() - since if kind and node == node_id else 0.0
        return replace(history, suspect_s=lasted if kind == SUSPECT else 0.0,
                       unreachable_s=lasted if kind == UNREACHABLE else 0.0)

    def note_streak(self, kind: str, node_id: str) -> None:
        if not kind:
            self.streak = ("", "", 0.0)
        elif self.streak[:2] != (kind, node_id):
            self.streak = (kind, node_id, time.monotonic())

    def observe(self) -> Seen:
        """The node through the TPU API and, on a READY node, the run on every worker."""
        from tpuctl.gcp.api import connect

        api = connect(self.target)
        node = api.find_node(self.target.name)
        owner = node.queued_resource.rsplit("/", 1)[-1] if node is not None and node.queued_resource else ""
        queued_name = owner or (self.target.name if self.spec().queued else "")
        resource = api.find_queued(queued_name) if queued_name else None
        queued = resource.state.state.name if resource is not None else ""
        if node is None:
            return Seen(Observation(ABSENT, self.last_node_id(), queued))
        if node.state.name != "READY":
            return Seen(Observation(node.state.name, str(node.id), queued))
        return self.observe_run(str(node.id), queued)

    def observe_run(self, node_id: str, queued: str) -> Seen:
        """Each worker's run of the goal's name: `none` unless it is one this babysit launched."""
        from tpuctl.gcp.discovery import discover_workers
        from tpuctl.ops.status import statuses

        workers = discover_workers(self.target)  # re-pins the host keys of a recreated node (a new node id)
        ours = self.launched()
        with Session(self.target) as session:
            report = statuses(session, self.target, workers, self.goal.name)
        runs, codes, logs, run_id = [], [], [], ""
        for outcome in report.outcomes:
            status = outcome.value if outcome.ok else None
            base = Path(status.log).name.removesuffix(".log") if status is not None and status.log else ""
            mine = status is not None and status.state != "none" and base in ours
            runs.append("unreachable" if status is None else status.state if mine else "none")
            codes.append(status.exit_code if mine and status is not None else None)
            logs.append(status.log if status is not None else "")
            run_id = run_id or (base if mine else "")
        first = report.outcomes[0].value if report.outcomes and report.outcomes[0].ok else None
        if first is not None and first.step:
            self.last_step = first.step.get("step", self.last_step)
        errors = [f"{o.worker}: {o.error}" for o in report.outcomes if not o.ok]
        return Seen(Observation("READY", node_id, queued, tuple(runs), tuple(codes), run_id, tuple(errors)), workers,
                    logs)

    def last_node_id(self) -> str:
        ids = [e.get("node_id", "") for e in events.read(self.path) if e["event"] == "observed"]
        return next((i for i in reversed(ids) if i), "")

    def launched(self) -> set[str]:
        return {e["run_id"] for e in events.read(self.path) if e["event"] == "launched"}

    def act(self, decision: Decision, seen: Seen) -> int | None:
        counted = {key: value for key, value in (("preempted_node", decision.counts_preemption),
                                                 ("failed_run", decision.counts_failure)) if value}
        if decision.action in (Action.WATCH, Action.WAIT):
            time.sleep(self.goal.poll_s)
            return None
        self.record("action", action=decision.action, reason=decision.reason, **counted)
        if decision.action == Action.RECREATE:
            self.recreate()
        elif decision.action in (Action.LAUNCH, Action.RELAUNCH):
            return self.prepare_and_launch(seen.workers, stop_first=decision.action == Action.RELAUNCH)
        else:
            if decision.action == Action.FAIL:
                self.failure_tail = self.read_failed_log(seen)
            result = {Action.SUCCEED: "succeed", Action.FAIL: "fail", Action.GIVE_UP: "give-up"}[decision.action]
            self.record("done", result=result, exit_code=decision.exit_code, step=self.last_step)
            return decision.exit_code
        return None

    def read_failed_log(self, seen: Seen, lines: int = 20) -> list[str]:
        """The last lines of the first failed worker's log; none when it cannot be read (gone, the worker
        unreachable): only shown, it must not keep the `done` event from being recorded."""
        import paramiko

        runs, codes = seen.observation.runs, seen.observation.exit_codes
        failed = next((i for i, (state, code) in enumerate(zip(runs, codes, strict=True))
                       if state == "vanished" or (state == "exited" and code != 0)), None)
        if failed is None or not seen.logs[failed]:
            return []
        try:
            with Session(self.target) as session:
                sftp = session.sftp(seen.workers[failed])
                with sftp.open(seen.logs[failed], "rb") as handle:
                    size = handle.stat().st_size
                    handle.seek(max(size - 16384, 0))
                    text = handle.read().decode(errors="replace")
        except (OSError, paramiko.SSHException, TpuctlError):
            return []
        return [f"{seen.workers[failed].label}: {line}" for line in text.splitlines()[-lines:]]

    def recreate(self) -> None:
        """Delete what is left of the node (or its queued resource) and ask for it again; later turns wait."""
        from tpuctl.gcp import lifecycle
        from tpuctl.gcp.api import connect

        api = connect(self.target)
        spec = self.spec()
        if api.find_node(spec.name) is not None or (spec.queued and api.find_queued(spec.name) is not None):
            lifecycle.delete(api, lifecycle.plan_deletion(api, spec.name), wait=True, timeout_s=1800)
        lifecycle.create(api, spec, wait=False, timeout_s=0)

    def prepare_and_launch(self, workers: list[Worker], stop_first: bool) -> int | None:
        """Launch the command: on a node without the run, after sync, setup, secrets push and verify-env; for
        a retry (`stop_first`), on the same disk, after stopping what is left of the failed run. A step that
        fails is recorded and the next turn looks again; MAX_PREPARE_FAILURES in a row end babysit."""
        from tpuctl.ops.launch import LaunchPlan
        from tpuctl.ops.runs import utc_stamp

        plan = LaunchPlan(self.goal.name, utc_stamp(), tuple(self.goal.command))
        launched = {}
        with Session(self.target) as session:
            failed = self.stop_failed(session, workers) if stop_first else self.prepare(session, workers)
            if failed is None:
                self.record("launched", run_id=plan.base, **({"head": self.synced_head} if self.synced_head else {}))
                from tpuctl.ops.launch import launch

                report = launch(session, self.target, workers, plan)
                failed = None if report.ok else "launch: " + "; ".join(report.refused or report.preflight.problems
                                                                        or [o.error or "" for o in report.starts if not o.ok])
                launched = {"run_id": plan.base}
        if failed is None:
            self.prepare_failures = 0
            return None
        self.prepare_failures += 1
        self.record("prepare-failed", step=failed, attempt=self.prepare_failures, **launched)
        if self.prepare_failures >= MAX_PREPARE_FAILURES:
            self.record("done", result="fail", exit_code=1, step=self.last_step)
            return 1
        time.sleep(self.goal.poll_s)
        return None

    def stop_failed(self, session: Session, workers: list[Worker]) -> str | None:
        from tpuctl.ops.stop import stop

        if not stop(session, self.target, workers, self.goal.name, STOP_GRACE_S).ok:
            return "stop: the failed run could not be stopped on every worker"
        return None

    def prepare(self, session: Session, workers: list[Worker]) -> str | None:
        """The steps before a launch on a node without the run; the first failure as `step: why`, or None.

        A step refused (BadInput: the SSH agent gone, the .env edited into a bad one, days into the run) fails
        like any other: recorded, looked at again next turn, MAX_PREPARE_FAILURES in a row end babysit. The same
        checks ran before babysit began (tpuctl.commands.babysit), so a bad start never gets this far."""
        steps = (("sync", self.sync_step), ("setup", self.setup_step), ("secrets push", self.secrets_step),
                 ("verify-env", self.verify_step))
        for name, step in steps:
            try:
                problem = step(session, workers)
            except BadInput as exc:
                problem = str(exc)
            if problem is not None:
                return f"{name}: {problem}"
        return None

    def sync_step(self, session: Session, workers: list[Worker]) -> str | None:
        """Sync origin/BRANCH; refused when it moved since the first launch (unless `follow_branch`): the run
        resumes from checkpoints the first launch's code wrote, and other code may not read them as it meant."""
        from tpuctl.ops.sync import SyncLabels, sync

        synced = sync(session, self.target, workers, SyncLabels.at(datetime.now(UTC), "babysit"))
        if not synced.ok:
            return "; ".join(synced.preflight.problems or [o.error or "" for o in synced.outcomes if not o.ok]
                             or ["the workers disagree on the commit"])
        self.synced_head = next(iter(synced.heads))
        began = next((e["head"] for e in events.read(self.path) if e["event"] == "launched" and e.get("head")), "")
        if began and self.synced_head != began and not self.goal.follow_branch:
            branch = f"origin/{self.target.branch}"
            return (f"{branch} is now at {self.synced_head[:7]}, but the run began at {began[:7]} and resumes from "
                    f"checkpoints that code wrote: push {began[:7]} back to {branch}, or start babysit again with "
                    f"--follow-branch to resume on the new code")
        return None

    def setup_step(self, session: Session, workers: list[Worker]) -> str | None:
        from tpuctl.ops.setup import setup

        prepared = setup(session, self.target, workers)
        return "; ".join(f"{o.worker}: {o.error}" for o in prepared if not o.ok) or None

    def secrets_step(self, session: Session, workers: list[Worker]) -> str | None:
        from tpuctl.envfile import load_env_file
        from tpuctl.ops.secrets import push_secrets

        if not self.goal.env_file.exists():
            return None
        pushed = push_secrets(session, self.target, workers, load_env_file(self.goal.env_file))
        return "; ".join(f"{o.worker}: {o.error}" for o in pushed if not o.ok) or None

    def verify_step(self, session: Session, workers: list[Worker]) -> str | None:
        from tpuctl.ops.verify import verify

        checked = verify(session, self.target, workers, self.target.expect_backend)
        if not checked.ok:
            return "; ".join(checked.env.problems or [o.error or "" for o in checked.outcomes if not o.ok])
        return None


def observation_record(seen: Observation) -> dict[str, Any]:
    return {"node": seen.node, "node_id": seen.node_id, "queued": seen.queued, "runs": list(seen.runs),
            "exit_codes": list(seen.exit_codes), "run_id": seen.run_id, "errors": list(seen.errors)}


"""babysit's decision: what one turn observed -> the one action that moves toward "the command exited 0".

Pure, with no I/O, so that every case is a unit test. The loop around it (tpuctl.ops.babysit) observes
the node through the TPU API and the run on every worker, asks `decide`, does the action and records
both in the events file. What was counted so far (preemptions by node id, failures by run) is read
back from the events file, so a babysit killed and started again counts exactly as the first one
would have; only how long a suspect picture has lasted on a READY node (History.suspect_s,
unreachable_s) is timed in memory, and a restarted babysit times it from 0, which only waits longer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

ABSENT = "ABSENT"  # the API has no such node (deleted, or taken back by a spot reclaim)
PREEMPTED_NODE_STATES = frozenset({"PREEMPTED", "TERMINATED", ABSENT})
LOST_QUEUE_STATES = frozenset({"SUSPENDING", "SUSPENDED", "FAILED"})
WAITING_QUEUE_STATES = frozenset({"CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING"})
SETTLING_NODE_STATES = frozenset({"CREATING", "STARTING", "RESTARTING", "REPAIRING", "REIMAGING", "UNHIDING",
                                  "DELETING"})
RUN_STATES = frozenset({"none", "running", "exited", "vanished", "unreachable"})


class Action(StrEnum):
    WAIT = "wait"  # nothing to do this turn: the node is settling or the queue waits for capacity
    WATCH = "watch"  # the run is healthy: leave it alone
    RECREATE = "recreate"  # the node was preempted: create it again with the same spec
    LAUNCH = "launch"  # a READY node without our run: sync, setup, secrets push, verify-env, launch
    RELAUNCH = "relaunch"  # the run failed and --max-failures allows another try: stop what is left, launch
    SUCCEED = "succeed"  # every worker's run exited 0
    FAIL = "fail"  # the run failed and no retry is left: exit with its code
    GIVE_UP = "give-up"  # a preemption beyond --max-preemptions, or a node nobody should restart


@dataclass(frozen=True)
class Observation:
    """One turn's view: the node and, when it is READY, the run of the watched name on each worker.

    `runs` holds one state per worker (RUN_STATES): `none` also for a run that began before this
    babysit's goal (not ours). `run_id` names the run seen (its log stamp); `node_id` the node, or for
    an absent node the last one seen.
    """

    node: str
    node_id: str = ""
    queued: str = ""  # the state of the queued resource that owns the node; "" when there is none
    runs: tuple[str, ...] = ()
    exit_codes: tuple[int | None, ...] = ()
    run_id: str = ""
    errors: tuple[str, ...] = ()  # why workers did not answer ("worker N: ..."), for an `unreachable` run

    def __post_init__(self) -> None:
        unknown = set(self.runs) - RUN_STATES
        if unknown:
            raise ValueError(f"runs: expected states among {sorted(RUN_STATES)}, received {sorted(unknown)}")


@dataclass(frozen=True)
class History:
    """What earlier turns counted, read back from the events file; and, kept by the loop in memory, for how
    many seconds the same node id has shown the same suspect picture (a restarted babysit starts those at 0,
    which only waits longer)."""

    preempted_nodes: frozenset[str] = field(default_factory=frozenset)
    failed_runs: frozenset[str] = field(default_factory=frozenset)
    suspect_s: float = 0.0  # seconds this READY node has shown a run that exited 143 or vanished
    unreachable_s: float = 0.0  # seconds this READY node has had a worker that does not answer


@dataclass(frozen=True)
class Limits:
    max_preemptions: int = 10
    max_failures: int = 0
    suspect_wait_s: float = 120.0  # how long a run TERMed on a READY node may wait for the API to say PREEMPTED
    unreachable_wait_s: float = 1800.0  # how long a worker of a READY node may not answer before babysit ends


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    exit_code: int = 0  # for FAIL and GIVE_UP: what babysit exits with
    counts_preemption: str = ""  # the node id a RECREATE counts as preempted
    counts_failure: str = ""  # the run id a RELAUNCH or FAIL counts as failed
    streak: str = ""  # SUSPECT or UNREACHABLE: the picture whose duration the loop measures (History)


GIVE_UP_EXIT = 3
TERMINATED_EXIT = 143  # 128 + SIGTERM: what a spot preemption's TERM makes of the trainer
SUSPECT = "suspect"
UNREACHABLE = "unreachable"


def decide(seen: Observation, history: History, limits: Limits) -> Decision:
    """The one action for this turn."""
    if seen.queued in LOST_QUEUE_STATES or (seen.node in PREEMPTED_NODE_STATES and seen.queued not in
                                            WAITING_QUEUE_STATES):
        return _preempted(seen, history, limits)
    if seen.queued in WAITING_QUEUE_STATES:
        return Decision(Action.WAIT, f"queued resource {seen.queued}, node {seen.node}")
    if seen.node in SETTLING_NODE_STATES:
        return Decision(Action.WAIT, f"node {seen.node}")
    if seen.node != "READY":
        return Decision(Action.GIVE_UP, f"node {seen.node}: babysit recovers preemptions only; whoever made it "
                                        f"{seen.node} must bring it back", GIVE_UP_EXIT)
    return _on_ready_node(seen, history, limits)


def _preempted(seen: Observation, history: History, limits: Limits) -> Decision:
    what = f"queued resource {seen.queued}" if seen.queued in LOST_QUEUE_STATES else f"node {seen.node}"
    count = len(history.preempted_nodes | {seen.node_id})
    if count > limits.max_preemptions:
        return Decision(Action.GIVE_UP, f"{what}: preemption {count} is over --max-preemptions "
                                        f"{limits.max_preemptions}", GIVE_UP_EXIT)
    return Decision(Action.RECREATE, f"{what}: preemption {count} of at most {limits.max_preemptions}",
                    counts_preemption=seen.node_id)


def _on_ready_node(seen: Observation, history: History, limits: Limits) -> Decision:
    """A READY node's run. Two pictures are not believed at once, for a bounded time on the same node id:

    - a run that exited 143 (TERM) or vanished: a spot preemption TERMs the trainer (it checkpoints and exits
      143) some 30 s before the TPU API stops reporting READY. Counting it as a failure would end babysit on
      the very event it exists for, so the turn waits (WAIT, `streak` SUSPECT) for the API to say PREEMPTED;
      only a node still READY after `suspect_wait_s` makes it a failure. Any other non-zero code fails at once.
    - a worker that does not answer: a new VM's sshd, or a network blip, comes back; a worker that never does
      (a refused host key, a broken disk) must not keep babysit waiting forever: after `unreachable_wait_s`
      babysit ends with exit 1 and the workers' errors.
    """
    runs = seen.runs
    if "unreachable" in runs:
        where = f"workers {_where(runs, 'unreachable')} do not answer on READY node {seen.node_id}"
        why = "".join(f"; {error}" for error in seen.errors)
        if history.unreachable_s >= limits.unreachable_wait_s:
            return Decision(Action.FAIL, f"{where} for {history.unreachable_s:.0f} s{why}", 1, streak=UNREACHABLE)
        return Decision(Action.WAIT, f"{where}{why}", streak=UNREACHABLE)
    failed = [i for i, (state, code) in enumerate(zip(runs, seen.exit_codes, strict=True))
              if state == "vanished" or (state == "exited" and code != 0)]
    suspect = failed and all(runs[i] == "vanished" or seen.exit_codes[i] == TERMINATED_EXIT for i in failed)
    if suspect and history.suspect_s < limits.suspect_wait_s:
        return Decision(Action.WAIT, f"the run was TERMed or vanished on workers {', '.join(map(str, failed))} of "
                                     f"READY node {seen.node_id}: a preemption the API has not reported yet?",
                        streak=SUSPECT)
    if failed:
        return _failed(seen, history, limits, failed)
    if "running" in runs:
        return Decision(Action.WATCH, f"running on workers {_where(runs, 'running')}")
    if runs and all(state == "exited" for state in runs):
        return Decision(Action.SUCCEED, "every worker's run exited 0")
    return Decision(Action.LAUNCH, "node READY without the run" if "exited" not in runs else
                    f"the run is missing on workers {_where(runs, 'none')}")


def _failed(seen: Observation, history: History, limits: Limits, failed: list[int]) -> Decision:
    first = failed[0]
    code = seen.exit_codes[first] if seen.runs[first] == "exited" else None
    what = f"worker {first}: the run {'exited ' + str(code) if code is not None else 'vanished (no exit code)'}"
    count = len(history.failed_runs | {seen.run_id})
    if count > limits.max_failures:
        tries = f" (--max-failures {limits.max_failures})" if limits.max_failures else ""
        return Decision(Action.FAIL, f"{what}{tries}", code if code else 1, counts_failure=seen.run_id)
    return Decision(Action.RELAUNCH, f"{what}: retry {count} of {limits.max_failures}", counts_failure=seen.run_id)


def _where(runs: tuple[str, ...], state: str) -> str:
    return ", ".join(str(i) for i, s in enumerate(runs) if s == state)

"""How the reports of operations look on the terminal: one function per report, shared by the command
of that name and by `smoke`, which shows the same steps. Each returns whether the report is a success,
for the command's exit code.

Everything a worker said (paths, log lines, errors) goes through `printable` or `shown`: no rich markup
or terminal escape from a worker reaches the terminal as such.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table

from tpuctl.console import BadInput, console, err_console, printable, shown

if TYPE_CHECKING:
    from tpuctl.config import Target
    from tpuctl.envfile import EnvFile
    from tpuctl.local_checkout import LocalCheckout
    from tpuctl.ops.common import Preflight, Step
    from tpuctl.ops.doctor import DeviceReport, KillReport
    from tpuctl.ops.events import Summary
    from tpuctl.ops.launch import LaunchReport
    from tpuctl.ops.metrics import Progress
    from tpuctl.ops.report import ReportFetch
    from tpuctl.ops.secrets import Pushed
    from tpuctl.ops.setup import Prepared
    from tpuctl.ops.status import StatusReport
    from tpuctl.ops.stop import StopReport
    from tpuctl.ops.sync import SyncReport
    from tpuctl.ops.tail import Followed
    from tpuctl.ops.trust import SeenKey
    from tpuctl.ops.verify import VerifyReport
    from tpuctl.transport import Outcome
    from tpuctl.workers import Worker

STEP_FIELDS = ("step", "loss", "entropy", "reward_mean", "dt")


def report_errors(outcomes: Sequence[Outcome]) -> bool:
    """Print each failed worker's error; True when every worker succeeded."""
    for outcome in outcomes:
        if not outcome.ok:
            err_console.print(f"[red]{outcome.worker.label} failed:[/] {shown(outcome.error or '')}")
    return all(outcome.ok for outcome in outcomes)


def print_dry_run(target: Target, steps: Sequence[Step]) -> None:
    """Each step: a script as the ssh command that would feed it to `bash -s`, or a note."""
    from tpuctl.ops.common import Note
    from tpuctl.remote.render import ssh_preview
    from tpuctl.workers import proxy_for

    for worker, step in steps:
        text = step.text if isinstance(step, Note) else ssh_preview(
            worker.index, target.user, worker.host, worker.port, step, proxy_for(target, worker))
        console.out(text, highlight=False)


def show_preflight(preflight: Preflight, operation: str, unchanged: str = "") -> bool:
    """Unreachable workers (False), then warnings; problems refuse the operation: BadInput, exit 2."""
    if not report_errors(preflight.outcomes):
        return False
    for worker, line in preflight.warnings:
        console.print(f"[yellow]{worker.label} warning:[/] {shown(line)}", highlight=False)
    if preflight.problems:
        raise BadInput(f"{operation} refused: " + "; ".join(preflight.problems) + unchanged)
    return True


def show_sync(report: SyncReport, target: Target) -> bool:
    if not report_errors(report.copied) or not show_preflight(report.preflight, "sync", " (nothing was changed)"):
        return False
    if report.refusals:
        raise BadInput("sync refused: " + "; ".join(report.refusals) + " (a refusing worker's checkout is left as it was)")
    for outcome in report.outcomes:
        if outcome.ok:
            synced = outcome.value
            notes = [f"local changes stashed as {synced.stashed}: git stash list"] if synced.stashed else []
            notes += [f"worker-only commits kept as {backup}" for backup in synced.backups]
            console.out(printable(f"{outcome.worker.label} {outcome.worker.address}  {synced.short_head}  {synced.status}"
                                  + "".join(f"  ({note})" for note in notes)), highlight=False)
    ok = report_errors(report.outcomes)
    if len(report.heads) > 1:
        console.print(f"[red]workers differ:[/] {shown(', '.join(sorted(h[:7] for h in report.heads)))}")
        return False
    if ok:
        head = next(iter(report.heads))
        console.print(f"[green]{len(report.outcomes)} worker(s) at {shown(head[:7])}[/] ({shown(target.branch)})")
    return ok


def show_local_checkout(local: LocalCheckout, worker_head: str) -> None:
    """The workers' commit against the local HEAD, and what --allow-unpushed let through."""
    from tpuctl.local_checkout import compare_heads

    for problem in local.problems():
        console.print(f"[yellow]local checkout:[/] {shown(problem)}", highlight=False)
    console.out(printable(compare_heads(local, worker_head)), highlight=False)


def show_push(outcomes: Sequence[Outcome[Pushed]], env: EnvFile) -> bool:
    for outcome in outcomes:
        if outcome.ok:
            kept = f"  (previous file kept as {outcome.value.previous})" if outcome.value.previous else ""
            console.out(printable(f"{outcome.worker.label} {outcome.worker.address}  {outcome.value.path}  "
                                  f"mode 600, sha256 verified{kept}"), highlight=False)
    ok = report_errors(outcomes)
    if ok:
        console.out(f"pushed {len(env.keys)} variable(s): {', '.join(env.keys)}", highlight=False)
    return ok


def show_verify(report: VerifyReport, as_json: bool = False) -> bool:
    if as_json:
        console.print_json(json.dumps({
            "ok": report.ok, "expect_backend": report.expect_backend, "pins": dict(report.pins),
            "workers": [{"worker": o.worker.index, "address": o.worker.address, "info": o.value, "error": o.error}
                        for o in report.outcomes],
            "problems": report.env.problems}))
        return report.ok
    reached = report_errors(report.outcomes)
    _print_versions([o.worker for o in report.outcomes], report)
    return reached and report.env.ok


def _print_versions(workers: list[Worker], report: VerifyReport) -> None:
    from tpuctl.ops.verify import VERSION_KEYS

    table = Table("worker", *VERSION_KEYS, "backend", "devices (local/global)", "kind")
    for worker in workers:
        info = report.env.infos.get(worker.index)
        if info is None:
            table.add_row(worker.label, *["-"] * (len(VERSION_KEYS) + 3))
            continue
        devices = f"{info.get('local_device_count', '-')}/{info.get('device_count', '-')}"
        table.add_row(worker.label, *(shown(str(info.get(k) or "-")) for k in VERSION_KEYS),
                      shown(str(info.get("backend", "-"))), shown(devices), shown(str(info.get("device_kind", "-"))))
    console.print(table)
    for problem in report.env.problems:
        console.print(f"[red]x[/] {shown(problem)}", highlight=False)
    if report.env.ok:
        console.print("[green]environment ok[/]")


def show_prepared(worker: Worker, prepared: Prepared) -> None:
    """One worker's setup, as soon as it is done (the others may still be installing)."""
    console.out(printable(f"{worker.label} {worker.address}  {prepared.summary}"), highlight=False)


def show_devices(outcomes: Sequence[Outcome[DeviceReport]], lockfile: str) -> None:
    """Per worker: the processes holding the TPU, and the lock file (stale when nothing holds the devices)."""
    table = Table("worker", "pid", "user", "age", "tpuctl run", "command")
    for o in outcomes:
        if not o.ok:
            continue
        for h in o.value.holders:
            table.add_row(o.worker.label, str(h.pid), shown(h.user), _age(h.age_s), shown(h.run or "-"), shown(h.command))
        if not o.value.holders:
            table.add_row(o.worker.label, "-", "", "", "", "nothing holds the TPU" +
                          (" that this user can see (not root)" if o.value.holders_unknown else ""))
    console.print(table)
    for o in outcomes:
        if o.ok:
            report = o.value
            state = ("absent" if not report.lock_present else
                     f"present ({_age(report.lock_age_s or 0)} old), " +
                     ("stale: nothing holds the TPU" if report.lock_stale else "held" if report.holders else
                      "cannot tell: not every process is visible"))
            console.out(printable(f"{o.worker.label} {lockfile}: {state}"), highlight=False)


def _age(seconds: int) -> str:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def show_killed(outcomes: Sequence[Outcome[KillReport]]) -> bool:
    for o in outcomes:
        if not o.ok:
            continue
        k = o.value
        parts = [f"TERM {', '.join(map(str, k.terminated))}" if k.terminated else "",
                 f"KILL {', '.join(map(str, k.killed))}" if k.killed else "",
                 f"gone {', '.join(map(str, k.gone))}" if k.gone else "",
                 *(f"skipped {s}" for s in k.skipped), f"lock file {k.lock_after}"]
        console.out(printable(f"{o.worker.label}  " + "; ".join(p for p in parts if p)), highlight=False)
    return report_errors(outcomes) and all(set(o.value.terminated) <= set(o.value.gone) for o in outcomes if o.ok)


def show_launch(report: LaunchReport) -> bool:
    if not show_preflight(report.preflight, "launch"):
        return False
    if report.refused_first:
        raise BadInput(f"launch refused: {report.refused_first}")
    for outcome in report.starts:
        if outcome.ok and not outcome.value.refused:
            console.out(printable(f"{outcome.worker.label} {outcome.worker.address}  started pid {outcome.value.pid}  "
                                  f"log {outcome.value.log}"), highlight=False)
    for line in report.refused:
        err_console.print(f"[red]refused:[/] {shown(line)}")
    return report_errors(report.starts) and not report.refused


def show_status(report: StatusReport, as_json: bool = False) -> bool:
    preempted = report.preempted
    if as_json:
        console.print_json(json.dumps([{"worker": o.worker.index, "address": o.worker.address,
                                        **(o.value.as_json() if o.ok else {"state": "unreachable", "error": o.error}),
                                        **({"state": "preempted"} if o.worker.index in preempted else {})}
                                       for o in report.outcomes]))
        return report.ok
    from tpuctl.ops.metrics import MEAN_OVER, describe

    table = Table("worker", "address", "state", "commit", *STEP_FIELDS[:-1], "dt (s)", "steps", f"s/step (last {MEAN_OVER})",
                  "ETA", "log")
    for o in report.outcomes:
        step = o.value.step if o.ok else {}
        state = ("[yellow]preempted[/]" if o.worker.index in preempted else
                 shown(o.value.label) if o.ok else "[red]unreachable[/]")
        commit = str(o.value.meta.get("git_head", ""))[:7] if o.ok else ""
        table.add_row(o.worker.label, o.worker.address, state, shown(commit), *(shown(step.get(k, "")) for k in STEP_FIELDS),
                      *describe(o.value.progress if o.ok else None), shown(o.value.log) if o.ok else "")
    console.print(table)
    return report_errors([o for o in report.outcomes if o.worker.index not in preempted])


STOP_WORDS = {"TERM": "stopped (TERM)", "none": "was not running",
              "unverified": "NOT signalled: its lock is held, but no process could be verified as the run "
                            "(pid file or identity changed); check the worker with ps"}


def show_stop(report: StopReport, name: str) -> bool:
    words = {**STOP_WORDS, "KILL": f"killed (KILL after {report.grace_s:g} s)"}
    for o in report.outcomes:
        if o.ok:
            what = words.get(o.value.signal, o.value.signal) if o.value.signal else f"no run named {name!r}"
            console.out(printable(f"{o.worker.label} {o.worker.address}  {what}; lock file {o.value.lock}"),
                        highlight=False)
    return report_errors(report.outcomes) and report.ok


def show_keys(outcomes: Sequence[Outcome[SeenKey]]) -> bool:
    """Each worker's host key next to what is pinned for it: pinned, CHANGED or not pinned."""
    for o in outcomes:
        if o.ok:
            verdict = ("pinned" if o.value.fingerprint in o.value.pinned else
                       f"[red]CHANGED[/] (pinned {', '.join(o.value.pinned)})" if o.value.pinned else "[yellow]not pinned[/]")
            console.print(f"{o.worker.label} {o.worker.address}  {o.value.kind} {o.value.fingerprint}  {verdict}",
                          highlight=False)
    return report_errors(outcomes)


class LogLines:
    """Prints the lines of one or more workers' logs as they come, each whole; `[wN]` labels with several."""

    def __init__(self, labelled: bool):
        self.labelled = labelled
        self._lock = threading.Lock()

    def emit(self, worker: Worker, line: str) -> None:
        with self._lock:
            console.out(f"[{worker.label}] {printable(line)}" if self.labelled else printable(line), highlight=False)

    @staticmethod
    def notice(text: str) -> None:
        err_console.print(text, highlight=False, markup=False)


def show_followed(followed: Followed) -> bool:
    for error in followed.errors:
        err_console.print(f"[red]error:[/] {shown(error)}")
    return not followed.errors


def show_fetched(fetched: ReportFetch) -> bool:
    """Per run: the bytes read this time and where the copy is; then each run that could not be fetched."""
    for run in fetched.runs:
        got = run.fetched
        how = (f"the file was cut back since the last report (a relaunch or resume): read again from its start, "
               f"{got.new_bytes} bytes" if got.restarted else f"{got.new_bytes} new bytes, {len(got.data)} in all")
        console.out(printable(f"{run.name}: {how} -> {run.copy}"), highlight=False)
    for error in fetched.errors:
        err_console.print(f"[red]error:[/] {shown(error)}")
    return not fetched.errors


class ProgressLine:
    """The one-line progress bar under a followed log (`tail --progress`): steps done of the total, the
    mean step time of the last steps and the ETA. Log lines printed through `console` go above it."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.fields[timing]}"), console=console, refresh_per_second=2)
        self._task = self._bar.add_task("waiting for the first step", total=None, timing="")

    def __enter__(self) -> ProgressLine:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def show(self, progress: Progress) -> None:
        from tpuctl.ops.metrics import describe

        steps, mean, eta = describe(progress)
        total = progress.total_steps
        self._bar.update(self._task, description=f"step {steps}", total=total, timing=f"{mean} s/step  ETA {eta}",
                         completed=min(progress.steps_done, total) if total else progress.steps_done)


_EVENT_STYLES = {"observed": "dim", "action": "bold", "launched": "green", "prepare-failed": "red", "done": "bold",
                 "goal": "bold", "resumed": "yellow"}


def show_babysit_event(event: dict[str, Any]) -> None:
    """One line per event of babysit's events file, as it is recorded."""
    kind = event["event"]
    clock = event["time"][11:19]
    if kind == "observed":
        runs = ", ".join(f"{state}{'' if code is None else f' {code}'}"
                         for state, code in zip(event["runs"], event["exit_codes"], strict=True))
        queued = f", queued resource {event['queued']}" if event["queued"] else ""
        text = f"node {event['node']}{queued}" + (f"; run: {runs}" if runs else "") + (
            f"; step {event['step']}" if event.get("step") else "") + "".join(f"; {e}" for e in event.get("errors", []))
    elif kind == "action":
        text = f"{event['action']}: {event['reason']}"
    elif kind == "launched":
        text = f"launched {event['run_id']}"
    elif kind == "goal":
        text = f"babysitting {' '.join(event['command'])}"
    elif kind == "done":
        text = f"done: {event['result']} (exit {event['exit_code']})"
    else:
        text = " ".join(f"{key}={value}" for key, value in event.items() if key not in ("time", "event"))
    style = _EVENT_STYLES.get(kind, "")
    console.print(f"{clock} [{style}]{kind:>9}[/] {shown(text)}" if style else f"{clock} {kind:>9} {shown(text)}",
                  highlight=False)


def show_babysit_summary(summary: Summary, last_step: str, failure_tail: Sequence[str]) -> None:
    """babysit's end: the failed run's last log lines when it failed, then one table."""
    if failure_tail:
        console.rule("end of the failed run's log")
        for line in failure_tail:
            console.out(printable(line), highlight=False)
    from tpuctl.ops.events import parse_time

    table = Table(show_header=False, title=f"babysit: {summary.result or 'stopped'}")
    wall = (parse_time(summary.finished) - parse_time(summary.started)).total_seconds() if summary.finished else None
    lost = ", ".join(f"{s:.0f} s" for s in summary.lost_s) or "none"
    for key, value in (("last step", shown(last_step or "-")), ("wall time", f"{wall:.0f} s" if wall is not None else "-"),
                       ("restarts", str(summary.restarts)), ("preemptions", str(summary.preemptions)),
                       ("failures", str(summary.failures)), ("time lost to preemptions", lost),
                       ("exit code", str(summary.exit_code))):
        table.add_row(key, value)
    console.print(table)


def show_babysit_status(summary: Summary) -> None:
    """What babysit counted for the run: restarts, preemptions, failures, the time each preemption cost."""
    lost = ", ".join(f"{s:.0f} s" for s in summary.lost_s) or "none"
    state = f"{summary.result} (exit {summary.exit_code})" if summary.result else "babysitting"
    console.print(f"babysit: {summary.restarts} restart(s), {summary.preemptions} preemption(s), {summary.failures} "
                  f"failure(s); time lost to preemptions: {lost}; {state}", highlight=False)

"""Operations on a target's workers, each returning data and printing nothing.

An operation takes a transport Session, the target and the workers, runs its scripts on every worker
in parallel and returns a report: one Outcome per worker (its value, or the error that stopped it),
so a failure on one worker never hides the others. Commands print the reports (tpuctl.commands.views);
`smoke` calls the same operations as the commands of those names. The operations a command can
--dry-run also give their plan (sync_plan, push_plan, launch_plan, stop_plan, verify_plan for smoke):
every script they would run, per worker, in order.
"""

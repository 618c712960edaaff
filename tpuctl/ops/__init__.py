"""Operations on a target's workers, each returning data and printing nothing.

An operation takes a transport Session, the target and the workers, runs its scripts on every worker
in parallel and returns a report: one Outcome per worker (its value, or the error that stopped it),
so a failure on one worker never hides the others. Commands print the reports (tpuctl.commands.views);
`smoke` and any loop that watches a run (a reconcile loop) call the same operations. Each operation
also gives its dry-run plan: every script it would run, per worker, in order.
"""

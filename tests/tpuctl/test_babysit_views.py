"""What babysit prints: worker text (a step value read from a log) shown, never interpreted."""

from __future__ import annotations

from tpuctl.commands.views import show_babysit_summary
from tpuctl.console import console
from tpuctl.ops.events import Summary


def test_the_summarys_last_step_from_a_worker_log_is_shown_literally():
    hostile = "[bold red]7[/bold red] [link=http://x]y[/link] \x1b]0;pwned\x07\x1b[2J"
    summary = Summary(command=["x"], started="2026-01-01T00:00:00.000000Z", result="fail", exit_code=1,
                      finished="2026-01-01T00:00:09.000000Z")
    with console.capture() as captured:
        show_babysit_summary(summary, hostile, [])
    text = captured.get()
    assert "[bold red]7[/bold red] [link=http://x]y[/link]" in text
    assert "\x1b" not in text and "\x07" not in text and "\\x1b]0;pwned" in text

"""What a long wait says while it waits: one line on stderr, redrawn in place on a
terminal, else printed as a plain line when it changes or when ``every_s`` has passed
(Fly buffers release output: a log that says nothing for minutes looks hung)."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import typer

from quiesce.model.report import Event, Notice, Progress, Pushed
from quiesce.text import plural, safe

log = logging.getLogger("quiesce")


class LiveLine:
    """The one progress renderer: ``show(text)`` as often as you like."""

    def __init__(self, *, every_s: float, on_change: bool, prefix: str = "") -> None:
        # -v logs lines of their own: a live line would be cut into them.
        self.tty = sys.stderr.isatty() and not log.isEnabledFor(logging.DEBUG)
        self.every_s = every_s
        self.on_change = on_change
        self.prefix = prefix
        self.last_text = ""
        self.last_at = -math.inf
        self.drawn = False

    def show(self, text: str, *, bar: str | None = None) -> None:
        if self.tty:
            sys.stderr.write(f"\r\x1b[2K{safe(bar or text)}")
            sys.stderr.flush()
            self.drawn = True
            return
        now = time.monotonic()
        changed = self.on_change and text != self.last_text
        if changed or now - self.last_at >= self.every_s:
            self.last_text, self.last_at = text, now
            print(safe(self.prefix + text), file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.drawn = False

    close = clear


class QuietProgress:
    """``quiet``: the push first (stdout, so release logs read in order), notices as they
    happen, then the live line (every 5 s in logs)."""

    def __init__(self, until: str, timeout_s: float, wait: bool) -> None:
        self.line = LiveLine(every_s=5.0, on_change=False)
        self.how = f"until {until}, timeout {timeout_s:g}s" if wait else "no wait"
        self.header_shown = False
        self.draining = until == "drained"

    def __call__(self, event: Event) -> None:
        if isinstance(event, Pushed):
            self.line.clear()
            typer.echo(
                f"signalled TSTP to {plural(event.targets, 'process', 'processes')} on "
                f"{plural(event.machines, 'machine')} ({self.how})"
            )
            sys.stdout.flush()
            self.header_shown = True
        elif isinstance(event, Notice):
            self.line.clear()
            print(safe(f"quiesce: {event.text}"), file=sys.stderr, flush=True)
        elif isinstance(event, Progress):
            self.line.show(self._text(event))

    def _text(self, event: Progress) -> str:
        if self.draining:
            longest = "" if event.longest_s is None else f", longest {event.longest_s:.0f}s"
            stalled = f", {event.stalled} stalled (no heartbeat)" if event.stalled else ""
            return (
                f"draining: {event.drained} drained, {event.vanished} exited, "
                f"{event.pending} busy or pending{stalled}; {event.jobs} jobs running"
                f"{longest}; {event.remaining_s:.0f}s left"
            )
        return (
            f"waiting: {event.confirmed} confirmed, {event.vanished} exited, "
            f"{event.pending} pending, {event.remaining_s:.0f}s left"
        )

    def close(self) -> None:
        self.line.clear()


class RejoinProgress:
    """``rejoin --wait``: a bar on a terminal, else the counts when they change or every
    30 s."""

    def __init__(self) -> None:
        self.line = LiveLine(every_s=30.0, on_change=True, prefix="rejoin: ")

    def __call__(self, report: Any, remaining_s: float) -> None:
        from quiesce.views.rejoin import counts_line, progress_line

        self.line.show(
            f"{counts_line(report)}; {remaining_s:.0f}s left",
            bar=progress_line(report, remaining_s),
        )

    def close(self) -> None:
        self.line.clear()

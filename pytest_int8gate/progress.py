"""Progress of long gate stages as people see it: one live line on a terminal, one line per stage in logs.

The pipeline reports ``(stage, message)`` events; :class:`ProgressPrinter` decides what to show, given
functions that write a line or rewrite the current one. A message that starts with ``done/total`` (e.g.
``"320/600 samples"``) is a counter tick: shown live, at most once a second with ``-v``, never in logs.
Nothing here knows pytest or the terminal.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Literal, TypeVar

import numpy as np

FeedsT = TypeVar("FeedsT", bound=Mapping[str, np.ndarray])

#: ``live``: one line rewritten in place; ``stages``: one line when a stage starts (and a closing line for
#: stages with several steps); ``all``: every event on its own line; ``off``: nothing.
ProgressMode = Literal["live", "stages", "all", "off"]

#: Rewrites of the live line are at most this often (seconds); a new stage always shows at once.
LIVE_INTERVAL = 0.1
#: Counter ticks print at most this often (seconds) when every event is printed (``-v``).
TICK_INTERVAL = 1.0
#: In logs (``stages``), a long stage with many steps (the culprit search) still prints its latest step
#: at least this often (seconds), so that CI output never looks hung.
HEARTBEAT_INTERVAL = 5.0
_TICK = re.compile(r"^(\d+)/(\d+)\b")


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``CI`` is set to something true (GitHub Actions, GitLab, Buildkite... set ``CI=true``)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def progress_mode(*, verbosity: int, interactive: bool, ci: bool) -> ProgressMode:
    """Quiet with ``-q``; every event with ``-v``; else live on a terminal, one line per stage in logs."""
    if verbosity < 0:
        return "off"
    if verbosity > 0:
        return "all"
    return "live" if interactive and not ci else "stages"


class ProgressPrinter:
    """Turns ``(stage, message)`` events into lines; call it per event, :meth:`close` when the gate ends."""

    def __init__(
        self,
        mode: ProgressMode,
        write_line: Callable[[str], None],
        rewrite: Callable[[str], None] | None = None,
        *,
        prefix: str = "int8gate",
        width: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``width``: the terminal's columns; a live line longer than that is cut (it would wrap)."""
        if mode == "live" and rewrite is None:
            mode = "stages"
        self.mode: ProgressMode = mode
        self.write_line = write_line
        self.rewrite = rewrite
        self.prefix = prefix
        self.width = width
        self.clock = clock
        self.stage: str | None = None
        self.stage_events = 0
        self.stage_started = 0.0
        self.last_rewrite = -float("inf")
        self.last_tick_line = -float("inf")
        self.last_line = -float("inf")
        self.live_text = ""

    def __call__(self, stage: str, message: str) -> None:
        if self.mode == "off":
            return
        now = self.clock()
        new_stage = stage != self.stage
        if new_stage:
            self._end_stage(now)
            self.stage, self.stage_events, self.stage_started = stage, 0, now
        tick = _TICK.match(message)
        if not tick:
            self.stage_events += 1
        line = f"{self.prefix} {stage}: {message}"
        if self.mode == "all" and tick:
            finished = tick.group(1) == tick.group(2)
            if finished or now - self.last_tick_line >= TICK_INTERVAL:
                self.write_line(line)
                self.last_tick_line = now
        elif self.mode == "all" or (self.mode == "stages" and new_stage and not tick):
            self.write_line(line)
            self.last_line = now
        elif self.mode == "stages" and now - self.last_line >= HEARTBEAT_INTERVAL:
            steps = f" [{self.stage_events}, {now - self.stage_started:.0f} s]"
            self.write_line(f"{self.prefix} {stage}{steps}: {message}")
            self.last_line = now
        elif self.mode == "live" and (new_stage or now - self.last_rewrite >= LIVE_INTERVAL):
            assert self.rewrite is not None
            steps = f" [{self.stage_events}]" if self.stage_events > 1 else ""
            text = f"{self.prefix} {stage}{steps}: {message}"
            if self.width > 4 and len(text) >= self.width:
                text = text[: self.width - 4] + "..."
            self.rewrite(text.ljust(len(self.live_text)))
            self.live_text = text
            self.last_rewrite = now

    def _end_stage(self, now: float) -> None:
        if self.stage is not None and self.mode == "stages" and self.stage_events > 1:
            seconds = now - self.stage_started
            self.write_line(f"{self.prefix} {self.stage}: done, {self.stage_events} steps in {seconds:.1f} s")

    def close(self) -> None:
        """End the gate's progress: close the last stage's log, clear the live line."""
        self._end_stage(self.clock())
        if self.mode == "live" and self.live_text and self.rewrite is not None:
            self.rewrite(" " * len(self.live_text))
            self.rewrite("")
        self.stage, self.stage_events, self.live_text = None, 0, ""


def counted_batches(
    batches: Iterable[FeedsT], total: int, report: Callable[[int, int], None]
) -> Iterator[FeedsT]:
    """``batches`` unchanged, calling ``report(samples done, total)`` after each one."""
    done = 0
    for feeds in batches:
        yield feeds
        done += len(next(iter(feeds.values()))) if feeds else 0
        report(done, total)

"""The terminal adapter: a gate's progress on pytest's terminal, outside output capture."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..progress import ProgressPrinter


def terminal_progress(config: pytest.Config) -> ProgressPrinter:
    """Progress of one gate: a live line on a terminal, one line per stage in CI logs, nothing with -q."""
    from ..progress import ProgressPrinter, in_ci, progress_mode

    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(config, "workerinput"):  # xdist workers have no terminal
        return ProgressPrinter("off", lambda line: None)
    capture = config.pluginmanager.get_plugin("capturemanager")

    def uncaptured() -> contextlib.AbstractContextManager[None]:
        # the test's output is being captured; progress belongs on the terminal now
        return capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()

    def write_line(line: str) -> None:
        with uncaptured():
            reporter.ensure_newline()
            reporter.write_line(line)

    def rewrite(line: str) -> None:
        with uncaptured():
            reporter.ensure_newline()
            reporter.rewrite(line)
            reporter.flush()

    mode = progress_mode(verbosity=config.get_verbosity(), interactive=bool(reporter.isatty), ci=in_ci())
    return ProgressPrinter(mode, write_line, rewrite, width=int(getattr(reporter, "_screen_width", 0) or 0))

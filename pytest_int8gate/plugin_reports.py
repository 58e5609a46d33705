"""pytest glue for what people read after a run and while they wait: the Markdown and HTML reports, the
GitHub step summary, the baseline comparison, pytest-html extras, and the progress line.

The rendering lives in ``report_formats`` and ``baseline``; this module only decides when and where.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from .baseline import Baseline, baseline_lines, load_baseline
from .errors import Int8GateError
from .progress import ProgressPrinter, in_ci, progress_mode
from .report_formats import (
    STEP_SUMMARY_VARIABLE,
    append_step_summary,
    gate_extra_html,
    html_report,
    markdown_report,
    write_text_report,
)


class ReportOptions(Protocol):
    """The run options this module reads (``plugin.Int8Options``)."""

    @property
    def report_json(self) -> Path | None: ...
    @property
    def report_md(self) -> Path | None: ...
    @property
    def report_html(self) -> Path | None: ...
    @property
    def baseline(self) -> Path | None: ...
    @property
    def baseline_tolerance(self) -> Mapping[str, float]: ...


class ReportState(Protocol):
    """The run state this module reads and fills (``plugin.Int8State``)."""

    @property
    def options(self) -> ReportOptions: ...
    @property
    def records(self) -> list[dict[str, Any]]: ...
    @property
    def report_meta(self) -> dict[str, Any]: ...


def _version() -> str:
    from . import __version__

    return __version__


class Int8ReportWriter:
    """On the controller, at the end of the session: baseline comparison, Markdown, HTML, step summary."""

    def __init__(self, config: pytest.Config, state: ReportState) -> None:
        self.config = config
        self.state = state
        self.is_worker = hasattr(config, "workerinput")
        self.messages: list[str] = []
        self.baseline: Baseline | None = None
        path = state.options.baseline
        if path is not None and not self.is_worker:
            try:
                self.baseline = load_baseline(path)
            except Int8GateError as exc:
                raise pytest.UsageError(f"--int8-baseline: {exc}") from None

    @pytest.hookimpl(tryfirst=True)  # before the JSON report is written: it carries the baseline fields
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Report files asked for are written even when no gate ran (a CI step may expect them); the step
        summary only gets a report when there is a gate to show."""
        if self.is_worker:
            return
        records = sorted(self.state.records, key=lambda r: str(r.get("nodeid")))
        meta = self.state.report_meta
        meta.setdefault("tool", "pytest-int8gate")
        meta.setdefault("tool_version", _version())
        now = datetime.datetime.now(datetime.timezone.utc)
        meta.setdefault("created", now.strftime("%Y-%m-%d %H:%M:%S UTC"))
        options = self.state.options
        failed = False
        if self.baseline is not None:
            for record in records:
                record["baseline"] = self.baseline.comparison(record, options.baseline_tolerance)
            meta["baseline"] = self.baseline.summary(records, options.baseline_tolerance)
            failed = bool(meta["baseline"]["regressions"])
        renderers = {
            "Markdown report": (options.report_md, markdown_report),
            "HTML report": (options.report_html, html_report),
        }
        for what, (target, render) in renderers.items():
            if target is None:
                continue
            try:
                write_text_report(target, render(records, meta))
                self.messages.append(f"int8gate: {what} written to {target}")
            except OSError as exc:
                self.messages.append(f"int8gate: ERROR: could not write the {what} to {target}: {exc}")
                failed = True
        try:
            summary = append_step_summary(records, meta) if records else None
            if summary is not None:
                self.messages.append(f"int8gate: report appended to ${STEP_SUMMARY_VARIABLE} ({summary})")
        except OSError as exc:
            self.messages.append(f"int8gate: ERROR: could not append to ${STEP_SUMMARY_VARIABLE}: {exc}")
            failed = True
        if failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(trylast=True)  # after the int8gate section's rows
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        baseline = self.state.report_meta.get("baseline")
        lines: list[str] = []
        if isinstance(baseline, Mapping) and self.state.records:
            records = sorted(self.state.records, key=lambda r: str(r.get("nodeid")))
            lines += baseline_lines(records, baseline)
        lines += self.messages
        for line in lines:
            terminalreporter.write_line(line, red="FAILED" in line or "ERROR" in line)


class Int8HtmlExtras:
    """Puts each gate's table and sensitivity chart into pytest-html's extras (registered only with it)."""

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # outside plugin.py's wrapper, which attaches the records
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        records: Sequence[Mapping[str, Any]] = getattr(report, "int8gate_records", None) or []
        if records:
            from pytest_html import extras  # type: ignore[import-not-found,import-untyped,unused-ignore]

            report.extras = [  # type: ignore[attr-defined]
                *getattr(report, "extras", []),
                *(extras.html(gate_extra_html(record)) for record in records),
            ]
        return report


def register_report_plugins(config: pytest.Config, state: ReportState) -> None:
    config.pluginmanager.register(Int8ReportWriter(config, state), "int8gate-report-writer")
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(Int8HtmlExtras(), "int8gate-html-extras")


def terminal_progress(config: pytest.Config) -> ProgressPrinter:
    """Progress of one gate: a live line on a terminal, one line per stage in CI logs, nothing with -q."""
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

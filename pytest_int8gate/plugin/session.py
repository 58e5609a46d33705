"""The run's one session object (kept in ``config.stash``): the options, every gate's record (from xdist
workers too), the header, and at the end of the run the reports, written in one place and in one order:
baseline comparison -> JSON -> Markdown -> HTML -> GitHub step summary -> terminal summary.

Report rendering lives in the ``report`` package, imported only when there is something to report.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import Int8GateError
from .options import Int8Options

if TYPE_CHECKING:
    from ..pipeline import GatePipeline
    from ..report.baseline import Baseline

#: Per-item records (plain JSON data) of the gates a test ran.
ITEM_RECORDS = pytest.StashKey[list[dict[str, Any]]]()


@dataclass(eq=False)  # identity: pluggy keys plugins by object
class Int8Session:
    """Per-run state and the hooks that report the run; registered as a plugin on the controller and on
    every xdist worker (workers only forward their records)."""

    config: pytest.Config
    options: Int8Options
    #: Whether the run sets any int8gate option or has a manifest: the header describes the backend then.
    configured: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    #: Session-scoped fixtures' pipelines, by model and data.
    pipelines: dict[tuple[str, ...], GatePipeline] = field(default_factory=dict)
    model_paths: set[Path] = field(default_factory=set)
    manifest_path: Path | None = None
    #: The reports' top-level fields.
    report_meta: dict[str, Any] = field(default_factory=dict)
    baseline: Baseline | None = None
    messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        path = self.options.baseline
        if path is not None and not self.is_worker:
            from ..report.baseline import load_baseline

            try:
                self.baseline = load_baseline(path)
            except Int8GateError as exc:
                raise pytest.UsageError(f"--int8-baseline: {exc}") from None

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    # ---- hooks ---------------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if not self.configured:
            return []  # describing the backend imports it: only for runs that gate
        from ..backends import get_backend

        options = self.options
        try:
            backend = str(get_backend(options.backend, ort_mode=options.ort_mode).describe())
        except Int8GateError as exc:
            backend = f"unavailable: {exc}"
        lines = [
            f"int8gate: backend {backend} (requested: {options.backend})",
            f"int8gate: calibrator {options.calibrator}; bisection "
            f"{options.bisect_strategy if options.bisect else 'off'}; cache {options.cache_dir}",
        ]
        if options.calib_data and not options.eval_data:
            lines.append(
                "int8gate: WARNING no --int8-eval-data: gates evaluate on the calibration data, which "
                "overstates INT8 accuracy; give a held-out set"
            )
        return lines

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        records = getattr(report, "int8gate_records", None)
        if records:
            self.records.extend(records)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Report files asked for are written even when no gate ran (a CI step may expect them); the step
        summary only gets a report when there is a gate to show."""
        for pipeline in self.pipelines.values():
            pipeline.close()  # the session fixtures' engines: their fixtures are torn down by now
        if self.is_worker:
            return
        if not self.records and not self._files_asked_for():
            return
        failed = self.write_reports()
        if failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        if self.records:
            from ..report import summary_lines

            terminalreporter.section("int8gate")
            for line in summary_lines(self.records):
                terminalreporter.write_line(line)
            if terminalreporter.config.option.verbose > 0:  # where each gate's time went, one line each
                from ..report.text import timings_line

                for record in self.records:
                    timings = timings_line(record)
                    if timings is not None:
                        terminalreporter.write_line(f"int8gate timings {timings}")
        baseline = self.report_meta.get("baseline")
        if isinstance(baseline, Mapping) and self.records:
            from ..report.text import baseline_lines

            for line in baseline_lines(self.records, baseline):
                terminalreporter.write_line(line, red="FAILED" in line or "ERROR" in line)
        for line in self.messages:
            terminalreporter.write_line(line, red="ERROR" in line)

    # ---- the reports ----------------------------------------------------------------------------
    def _files_asked_for(self) -> bool:
        options = self.options
        return any(p is not None for p in (options.report_json, options.report_md, options.report_html))

    def write_reports(self) -> bool:
        """Baseline comparison, JSON, Markdown, HTML, step summary; True when one of them fails the run."""
        from ..report import (
            STEP_SUMMARY_VARIABLE,
            append_step_summary,
            html_report,
            markdown_report,
            write_json_report,
            write_text_report,
        )

        self.records.sort(key=lambda r: str(r.get("nodeid")))
        records, meta, options = self.records, self.report_meta, self.options
        meta.setdefault("tool", "pytest-int8gate")
        meta.setdefault("tool_version", _version())
        now = datetime.datetime.now(datetime.timezone.utc)
        meta.setdefault("created", now.strftime("%Y-%m-%d %H:%M:%S UTC"))
        failed = False
        if self.baseline is not None:
            for record in records:
                record["baseline"] = self.baseline.comparison(record, options.baseline_tolerance)
            meta["baseline"] = self.baseline.summary(records, options.baseline_tolerance)
            failed = bool(meta["baseline"]["regressions"])

        reports: list[tuple[str, Path | None, Callable[..., str] | None]] = [
            ("JSON report", options.report_json, None),
            ("Markdown report", options.report_md, markdown_report),
            ("HTML report", options.report_html, html_report),
        ]
        for what, target, render in reports:
            if target is None:
                continue
            try:
                if render is None:
                    write_json_report(target, records, meta)
                else:
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
        return failed


class Int8HtmlExtras:
    """Puts each gate's table and sensitivity chart into pytest-html's extras (registered only with it)."""

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # outside the plugin's wrapper, which attaches the records
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        records: Sequence[Mapping[str, Any]] = getattr(report, "int8gate_records", None) or []
        if records:
            from pytest_html import extras  # type: ignore[import-not-found,import-untyped,unused-ignore]

            from ..report import gate_extra_html

            report.extras = [  # type: ignore[attr-defined]
                *getattr(report, "extras", []),
                *(extras.html(gate_extra_html(record)) for record in records),
            ]
        return report


def _version() -> str:
    from .. import __version__

    return __version__

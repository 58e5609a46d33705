"""What people and tools read about gates: one JSON codec, one view, and its renderings.

- ``codec``: verdicts and errors to JSON report records, finite-safe, schema name and version;
- ``decode``: records back to the result types, and a stored report file read with its version checked;
- ``records``: a gate that could not be judged, a gate against the baseline, one gate's record in a run;
- ``view``: every word and number the reports show about a gate, computed once;
- ``text``, ``markdown``, ``html`` (+ ``chart``): renderings of the view (failure text, terminal summary,
  JUnit properties; Markdown report; HTML report and pytest-html fragment);
- ``documents``: the run's report documents from its records, and writing them;
- ``baseline``: comparing a run with a stored JSON report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..results import Finding
from .codec import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, dumps, encode_error, encode_verdict
from .documents import (
    STEP_SUMMARY_LIMIT,
    STEP_SUMMARY_VARIABLE,
    append_step_summary,
    gate_extra_html,
    gate_html,
    html_report,
    markdown_report,
    step_summary_markdown,
    write_json_report,
    write_text_report,
)
from .records import GateError, GateRecord
from .text import (
    SummaryRow,
    failure_text,
    junit_properties,
    summary_lines,
    summary_row,
    timings_line,
    verdict_text,
)
from .view import KEY_METRICS, GateView, counts_text, gate_view

#: The verdict's report record (the codec's encoding); kept under the name the plugin and CLI call.
verdict_record = encode_verdict


def error_record(
    *,
    model: str,
    name: str,
    nodeid: str,
    message: str,
    duration_s: float,
    backend: str = "",
    calibrator: str = "",
    diagnostics: Sequence[Finding] = (),
) -> dict[str, Any]:
    """The report record of a gate that could not be judged; same keys as a verdict's, nothing measured.

    ``backend`` is the requested backend's name (nothing may have been built); ``diagnostics`` what was
    found about the error (the first NaN tensor).
    """
    error = GateError(name, model, message, backend, calibrator, tuple(diagnostics), duration_s)
    return encode_error(error, nodeid=nodeid)


__all__ = [
    "KEY_METRICS",
    "REPORT_SCHEMA",
    "REPORT_SCHEMA_VERSION",
    "STEP_SUMMARY_LIMIT",
    "STEP_SUMMARY_VARIABLE",
    "GateError",
    "GateRecord",
    "GateView",
    "SummaryRow",
    "append_step_summary",
    "counts_text",
    "dumps",
    "error_record",
    "failure_text",
    "gate_extra_html",
    "gate_html",
    "gate_view",
    "html_report",
    "junit_properties",
    "markdown_report",
    "step_summary_markdown",
    "summary_lines",
    "summary_row",
    "timings_line",
    "verdict_record",
    "verdict_text",
    "write_json_report",
    "write_text_report",
]

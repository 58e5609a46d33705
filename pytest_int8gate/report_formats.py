"""The Markdown and HTML reports' former home; they live in the ``report`` package now (import from there)."""

from __future__ import annotations

from .report.codec import decode_number as as_float
from .report.documents import (
    STEP_SUMMARY_LIMIT,
    STEP_SUMMARY_VARIABLE,
    append_step_summary,
    gate_extra_html,
    gate_html,
    html_report,
    markdown_report,
    step_summary_markdown,
    write_text_report,
)
from .report.markdown import md_code, md_text
from .report.view import fmt, fmt_change, fmt_db

__all__ = [
    "STEP_SUMMARY_LIMIT",
    "STEP_SUMMARY_VARIABLE",
    "append_step_summary",
    "as_float",
    "fmt",
    "fmt_change",
    "fmt_db",
    "gate_extra_html",
    "gate_html",
    "html_report",
    "markdown_report",
    "md_code",
    "md_text",
    "step_summary_markdown",
    "write_text_report",
]

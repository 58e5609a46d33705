"""The report documents of a run, from its gate records: the JSON report, Markdown, HTML, the GitHub step
summary, and writing them. Records are the codec's JSON data (so records from pytest-xdist workers or from
a stored ``--int8-report-json`` file render alike); ``meta`` holds the report's top-level fields."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cache import atomic_write_bytes
from .codec import dumps, report_document
from .html import gate_extra_fragment, gate_fragment, render_html
from .markdown import render_markdown
from .view import GateView, gate_view

#: GitHub rejects a step summary over 1 MiB; beyond this the per-gate details are left out.
STEP_SUMMARY_LIMIT = 1_000_000
STEP_SUMMARY_VARIABLE = "GITHUB_STEP_SUMMARY"


def views_of(records: Sequence[Mapping[str, Any]]) -> list[GateView]:
    return [gate_view(record) for record in records]


def write_json_report(
    path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
) -> None:
    """The session's JSON report; ``meta`` adds top-level fields but cannot replace the schema's."""
    atomic_write_bytes(Path(path), dumps(report_document(records, meta)).encode())


def write_text_report(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def markdown_report(
    records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None, *, details: bool = True
) -> str:
    """The run as Markdown: one table of all gates, then each failing or erroring gate in detail."""
    return render_markdown(views_of(records), meta or {}, details=details)


def html_report(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> str:
    """The run as one self-contained HTML page: no network, no scripts, styles and charts inline."""
    return render_html(views_of(records), meta or {})


def gate_html(record: Mapping[str, Any]) -> str:
    """One gate's details as an HTML fragment."""
    return gate_fragment(gate_view(record))


def gate_extra_html(record: Mapping[str, Any]) -> str:
    """One gate's details with the report's styles, for pytest-html's extras."""
    return gate_extra_fragment(gate_view(record))


def step_summary_markdown(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> str:
    """The Markdown for ``$GITHUB_STEP_SUMMARY``: the full report, or the table alone if it is too long."""
    views = views_of(records)
    text = render_markdown(views, meta or {})
    if len(text.encode()) <= STEP_SUMMARY_LIMIT:
        return text
    return render_markdown(views, meta or {}, details=False) + (
        "\nPer-gate details left out: the report is larger than a step summary may be; "
        "see the --int8-report-md or --int8-report-html file.\n"
    )


def append_step_summary(
    records: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Append the report to the file named by ``$GITHUB_STEP_SUMMARY``; the path, or None when unset."""
    target = (os.environ if environ is None else environ).get(STEP_SUMMARY_VARIABLE, "")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as handle:  # appended: other steps' summaries stay
        handle.write(step_summary_markdown(records, meta) + "\n")
    return path

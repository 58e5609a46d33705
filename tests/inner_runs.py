"""Readers of what an inner pytest run (``pytester``) printed and wrote: its whole output, the failure
section, and the gate records of its JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def output_of(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def failure_section(result: pytest.RunResult) -> str:
    """The text between the FAILURES header and the int8gate summary."""
    text = result.stdout.str()
    assert "= FAILURES =" in text, text
    return text.split("= FAILURES =", 1)[1].split("= int8gate =", 1)[0]


def gates(report: Path, by: str = "name") -> dict[str, dict[str, Any]]:
    """The JSON report's gate records, keyed by the field ``by`` (``name`` or ``nodeid``)."""
    return {gate[by]: gate for gate in json.loads(report.read_text())["gates"]}

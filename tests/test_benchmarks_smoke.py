"""``python benchmarks/run_all.py --smoke``: the one command that runs every benchmark works, end to end, on a
tiny case, and writes a results file with every section, the machine, the command and a verdict per target;
the speed benchmark's measurements run in this process on a tiny network."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_run_all_smoke_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"

    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--smoke", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmark results\n")
    for field in (
        "- machine: ",
        "- software: Python ",
        "onnxruntime ",
        "- command: `python benchmarks/run_all.py --smoke",
    ):
        assert field in text, field
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in summary.splitlines() if re.match(r"\| \d ", line)]
    assert {row.split("|")[1].strip()[0] for row in rows} == {"1", "2", "3", "4", "5", "6", "8"}
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert float(cells[2]) > 0 and cells[5] in ("met", "**not met**"), row
    for section in (
        "## 1. Calibration",
        "## 2. Memory",
        "## 3. Bisection",
        "## 4. Warm re-run",
        "## 5. Gate overhead",
        "## 6. Plugin import",
        "## 7. Speed where users wait",
        "## 8. Search: adaptive, binary-only, linear",
        "## 9. Repair rungs",
    ):
        assert section in text, section
    assert "| bare FP32 pass (ONNX Runtime session + run) |" in text
    assert "| 8 | fc4, fc6 |" in text  # the bisection table of bench_bisect, N = 8
    assert "| planted N=8 at fc4 (entropy) | cosine >= 0.99 | adaptive | culprits |" in text  # bench_search
    if "**not met**" in summary:
        assert "## Where a target is missed: why, and what would meet it" in text


def test_speed_benchmark_measures_every_figure_on_a_tiny_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_speed

    lines, figures = bench_speed.measure(bench_speed.SMOKE, tmp_path)

    assert {f.benchmark for f in figures} == {"1 calibration", "4 warm re-run", "5 overhead"}
    assert all(f.ratio > 0 for f in figures)
    text = "\n".join(lines)
    assert "reused from the cache: calibration table, FP32 outputs, INT8 outputs, diagnostics" in text
    for heading in ("### Calibration", "### A rerun that changes only the budget", "### Simulated INT8"):
        assert heading in text, heading
    assert "### Calibration of a ResNet-18-shaped network" in text
    assert sum("calibration in the loop" in f.what for f in figures) == 2  # the small and the realistic net
    line = "  pass in all      2.424 s  (reading, checking, fingerprinting the data)"
    timing = bench_speed._TIMING_LINE.match(line)
    assert timing is not None and (timing["name"], timing["seconds"]) == ("pass in all", "2.424")


def test_repair_benchmark_names_every_rung_of_its_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows of the cases only an FP32 rewrite keeps in INT8: a wide input feature (SmoothQuant) and
    weights rounded to zero (bias correction)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_repair

    rows = bench_repair.measure([bench_repair.wide_input_case(tmp_path), bench_repair.bias_case(tmp_path)])

    wide = next(row for row in rows if "input feature 0" in row)
    rounded = next(row for row in rows if "rounded to 0" in row)
    assert "| 1 smoothquant | 0 |" in wide, wide
    assert "| 1 bias corr. | 0 |" in rounded, rounded


def test_every_mutant_still_applies_to_the_code_it_targets() -> None:
    """A mutant whose original text no longer exists would be reported as neither killed nor survived."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mutation.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith("applies") for line in lines), "\n".join(
        line for line in lines if not line.startswith("applies")
    )

"""What the plugin costs a pytest run that gates nothing: ``pytest -q`` on a one-test project with the
plugin loaded (as it is wherever the package is installed) against the same run with ``-p no:int8gate``.

Run from anywhere: ``python benchmarks/bench_plugin_import.py``. Each run is a fresh process; the two
variants alternate, and the figure is the ratio of their median wall times. Prints a Markdown table and
writes it to ``benchmarks/results/plugin_import.md``. Target: at most 1.25x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import ROOT, environment_lines, load_average

TARGET = 1.25
RESULT = ROOT / "benchmarks" / "results" / "plugin_import.md"
VARIANTS = {"with the plugin": (), "-p no:int8gate": ("-p", "no:int8gate")}


def one_test_project(folder: Path) -> Path:
    """A project with one passing test and its own ini (nothing of this repository's configuration)."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    return folder


def measure(runs: int, folder: Path) -> dict[str, list[float]]:
    """Wall seconds of ``runs`` runs of each variant, alternating, each a fresh ``python -m pytest -q``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for run in range(runs + 1):  # the first round warms the file system cache and is not counted
        order = list(VARIANTS) if run % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *VARIANTS[name]],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
            )
            elapsed = time.perf_counter() - started
            if done.returncode != 0 or "1 passed" not in done.stdout:
                raise SystemExit(f"{name}: the one-test run did not pass:\n{done.stdout}{done.stderr}")
            if run:
                times[name].append(elapsed)
    return times


def ratio(times: dict[str, list[float]]) -> float:
    with_plugin, without = (statistics.median(times[name]) for name in VARIANTS)
    return with_plugin / without


def table(times: dict[str, list[float]]) -> list[str]:
    lines = [
        f"`pytest -q` on a one-test project, median of {len(times['with the plugin'])} alternating runs "
        "(each a fresh process):",
        "",
        "| variant | median s | min s | max s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, values in times.items():
        lines.append(
            f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |"
        )
    figure = ratio(times)
    lines += [
        "",
        f"Ratio with / without the plugin: **{figure:.2f}x** (target <= {TARGET}x: "
        f"{'met' if figure <= TARGET else 'not met'}).",
        "",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each variant (default 15)")
    parser.add_argument("--out", type=Path, default=RESULT, help="Markdown result file")
    args = parser.parse_args(argv)
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="int8gate_plugin_import_") as tmp:
        times = measure(args.runs, one_test_project(Path(tmp)))
    lines = [
        "# Plugin import: a pytest run that gates nothing",
        "",
        *environment_lines(),
        f"- command: `python benchmarks/bench_plugin_import.py --runs {args.runs}`",
        f"- load average (1 min) at start / end: {load_start} / {load_average()}",
        "",
        *table(times),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(table(times)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

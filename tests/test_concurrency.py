"""Concurrency: gates of one model run at the same time share one cache entry, build it once and agree.

Two set-ups, both through real ``pytest`` processes: ``pytest -n 4`` with several manifest items gating the
same model, and two separate ``pytest`` processes started together on the same cache directory. Builds are
counted from the JSON report: a gate that found the calibration table cached lists ``calibration table``
in its ``cache_hits``, so the gates without it are the ones that calibrated. The calibration data comes
from a ``module:function`` loader that sleeps, so that the gates really overlap while one of them builds; the
loader logs each call with its process and whether the calibration table existed yet, and each race test
first proves that at least two processes were reading before any table was written (the race happened).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_int8gate.cache import entry_problem

sys.path.insert(0, str(Path(__file__).resolve().parent))
import planted

pytestmark = pytest.mark.slow

HAS_XDIST = importlib.util.find_spec("xdist") is not None
TIMEOUT = 240
SLOW_DATA = """
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path({root!r})


def calib():
    built = any((ROOT / "cache" / "calibration").glob("*.json"))
    with open(ROOT / "loader.log", "a") as log:
        log.write(f"{{os.getpid()}} {{int(built)}}\\n")
    time.sleep(0.3)  # a slow data source: every gate is still reading while the first one calibrates
    yield {{"x": np.random.default_rng(1).standard_normal((256, 16)).astype(np.float32)}}
"""


@pytest.fixture
def project(empty_project: pytest.Pytester) -> pytest.Pytester:
    planted.save_chain(planted.chain_weights(8), empty_project.path / "chain.onnx")
    (empty_project.path / "slowdata.py").write_text(SLOW_DATA.format(root=str(empty_project.path)))
    return empty_project


def racing_processes(root: Path) -> int:
    """How many processes read the calibration data before any calibration table was in the cache."""
    calls = [line.split() for line in (root / "loader.log").read_text().splitlines()]
    return len({pid for pid, built in calls if built == "0"})


def write_manifest(root: Path, gates: int) -> None:
    entries = "".join(
        f"  - {{name: gate{i}, model: chain.onnx, calib_data: 'slowdata:calib'}}\n" for i in range(gates)
    )
    (root / "int8gate.yaml").write_text("models:\n" + entries)


def records(report: Path) -> list[dict[str, Any]]:
    gates: list[dict[str, Any]] = json.loads(report.read_text())["gates"]
    return gates


def builds(gates: list[dict[str, Any]]) -> int:
    return sum("calibration table" not in gate["cache_hits"] for gate in gates)


def assert_one_valid_entry_each(cache: Path) -> None:
    for kind, suffix in (("calibration", ".json"), ("qdq", ".onnx")):
        entries = sorted((cache / kind).glob(f"*{suffix}"))
        assert len(entries) == 1, (kind, entries)
        assert entry_problem(entries[0]) is None, entries[0]
        assert not list((cache / kind).glob("*.tmp")), kind


def assert_identical_verdicts(gates: list[dict[str, Any]]) -> None:
    first = gates[0]
    assert first["verdict"] == "pass", first
    for gate in gates[1:]:
        assert gate["verdict"] == first["verdict"], gate["nodeid"]
        assert gate["metrics"] == first["metrics"], gate["nodeid"]
        assert gate["measured"] == first["measured"], gate["nodeid"]
        assert not any("rebuilt" in note for note in gate["notes"]), gate["notes"]


@pytest.mark.skipif(not HAS_XDIST, reason="pytest-xdist is not installed")
def test_four_xdist_workers_gating_one_model_build_its_table_once_and_agree(project: pytest.Pytester) -> None:
    write_manifest(project.path, gates=6)

    result = project.runpytest_subprocess(
        "-n", "4", "--int8-cache-dir", "cache", "--int8-report-json", "report.json", timeout=TIMEOUT
    )

    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["created: 4/4 workers*"])
    assert racing_processes(project.path) >= 2  # workers really raced for the table
    gates = records(project.path / "report.json")
    assert len(gates) == 6
    assert builds(gates) == 1, [gate["cache_hits"] for gate in gates]
    assert_identical_verdicts(gates)
    assert_one_valid_entry_each(project.path / "cache")


def test_two_pytest_processes_started_together_on_one_cache_neither_corrupt_nor_double_build(
    project: pytest.Pytester,
) -> None:
    write_manifest(project.path, gates=2)
    env = {**os.environ, "PYTEST_ADDOPTS": "-p no:hypothesispytest -p no:benchmark -p no:cacheprovider"}
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "--int8-cache-dir",
                "cache",
                "--int8-report-json",
                f"report{i}.json",
            ],
            cwd=project.path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=TIMEOUT)[0].decode() for run in runs]

    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
    assert racing_processes(project.path) == 2  # both started reading before either had built the table
    gates = records(project.path / "report0.json") + records(project.path / "report1.json")
    assert len(gates) == 4
    assert builds(gates) == 1, [gate["cache_hits"] for gate in gates]
    assert_identical_verdicts(gates)
    assert_one_valid_entry_each(project.path / "cache")


def test_a_corrupted_cache_entry_is_rebuilt_and_the_verdict_says_so(project: pytest.Pytester) -> None:
    """The pipeline's view of a damaged entry: the gate still runs on a correct table, with the same
    numbers, and its report carries the note (test_cache_integrity.py covers the cache on its own)."""
    write_manifest(project.path, gates=1)
    args = ("--int8-cache-dir", "cache", "-p", "no:cacheprovider")
    project.runpytest(*args, "--int8-report-json", "first.json").assert_outcomes(passed=1)
    (table,) = (project.path / "cache" / "calibration").glob("*.json")
    table.write_bytes(table.read_bytes()[:-40])  # as a non-atomic writer killed mid-write leaves it

    result = project.runpytest(*args, "--int8-report-json", "second.json", "-rA")

    result.assert_outcomes(passed=1)
    (before,), (after,) = records(project.path / "first.json"), records(project.path / "second.json")
    assert after["measured"] == before["measured"] and after["metrics"] == before["metrics"]
    assert "calibration table" not in after["cache_hits"]  # rebuilt, not reused
    (note,) = [note for note in after["notes"] if "rebuilt" in note]
    assert note.startswith(f"cache entry {table} does not match its checksum (sha256 "), note
    assert note.endswith("; rebuilt it"), note
    # a passing gate prints no notes; the warning logged when the entry was rebuilt is what the user sees
    logged = [line for line in result.stdout.lines if line.endswith(f" int8gate: {note}")]
    assert len(logged) == 1 and logged[0].startswith("WARNING "), result.stdout.str()
    assert entry_problem(table) is None

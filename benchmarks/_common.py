"""What every benchmark's result file says about where it was measured: the date, the machine, the software,
the device, and the load average the shared machine was under; and the headline ``Figure`` of a summary.

Imports only the standard library at module level: ``bench_calibrate.py``'s worker processes import it too,
and measure their own memory after their imports.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("numpy", "onnx", "onnxruntime", "pytest-int8gate")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int | None:
    """The CPUs this process may run on (its affinity), which can be fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    """The 1-minute load average, to be shown at a benchmark's start and end."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"


def environment_lines() -> list[str]:
    """The ``- date:``, ``- machine:``, ``- software:`` and ``- device:`` lines of a result file's header."""
    # Imported here, not above: the FP32 and ORT calibration workers must not load pytest_int8gate.
    from pytest_int8gate.backends.onnxruntime import device_text

    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu_model()}, nproc {usable_cpus()}, {platform.system()} {platform.machine()}",
        f"- software: Python {platform.python_version()}, "
        + ", ".join(f"{package} {version(package)}" for package in PACKAGES),
        f"- device: {device_text()}",
    ]


@dataclass(frozen=True)
class Figure:
    """One headline figure: a ratio against its baseline from the same run, and the target."""

    #: The section of benchmarks/RESULTS.md the figure belongs to ("1 calibration", "4 warm re-run", ...).
    benchmark: str
    what: str
    ratio: float
    baseline: str
    target: str
    met: bool

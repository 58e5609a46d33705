"""The plugin is light: importing it, and a pytest run that gates nothing, load neither ONNX, ONNX Runtime,
numpy nor any stage of the gate (they load when the first gate runs). Every pytest run in an environment
where the package is installed imports the plugin, so this is paid by every project, gating or not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: The modules of the package that may load with the plugin: the settings table and what it names (the
#: choices, the budget keys, the error types).
LIGHT = (
    "pytest_int8gate",
    "pytest_int8gate.budget",
    "pytest_int8gate.choices",
    "pytest_int8gate.errors",
    "pytest_int8gate.settings",
)
HEAVY = ("onnx", "onnxruntime", "numpy", "yaml")


def test_importing_the_plugin_loads_no_heavy_module() -> None:
    code = (
        "import json, sys; import pytest_int8gate.plugin; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r} or m.startswith('pytest_int8gate'))))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)

    assert not [m for m in loaded if m.split(".")[0] in HEAVY], loaded
    stages = [m for m in loaded if m not in LIGHT and not m.startswith("pytest_int8gate.plugin")]
    assert not stages, stages


def test_a_run_that_gates_nothing_loads_no_heavy_module(empty_project: pytest.Pytester) -> None:
    empty_project.makepyfile(
        test_plain=f"""
        import sys

        def test_plain():
            heavy = [m for m in sys.modules if m.split(".")[0] in {HEAVY!r}]
            stages = [m for m in sys.modules if m.startswith("pytest_int8gate.")
                      and m not in {LIGHT!r} and not m.startswith("pytest_int8gate.plugin")]
            assert not heavy and not stages, (heavy, stages)
        """
    )

    # a subprocess: the plugin is loaded from its entry point, as in a user's project
    result = empty_project.runpytest_subprocess()

    result.assert_outcomes(passed=1)

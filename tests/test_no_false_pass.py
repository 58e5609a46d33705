"""No false pass: models that must fail, run through every entry point — a marker test calling
``int8_gate``, ``--int8-model`` and the ``int8gate.yaml`` manifest — fail every time.

The suite: a planted INT8 offender (tests/planted.py: one layer's input scale set by a 1e4-times larger
channel, same FP32 function), a graph whose FP32 output is NaN, an FP32 model whose outputs do not match
the user's FP32 reference, and a test that requests ``int8_gate`` but never runs a gate. The unplanted
chain, run the same ways in the same session, passes: each failure is the model's, not the harness's.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import planted

pytestmark = pytest.mark.slow

LAYERS, PLANTED_AT, SAMPLES = 6, 3, 300


def nan_model() -> onnx.ModelProto:
    """x [N, 16] -> Gemm -> Log: the log of the negative half of the Gemm's output is NaN in FP32."""
    weight = np.random.default_rng(3).normal(size=(16, 16)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w"], ["h"], name="fc0"),
            helper.make_node("Log", ["h"], ["y"], name="log"),
        ],
        "nan_output",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def project(empty_project: pytest.Pytester) -> pytest.Pytester:
    root = empty_project.path
    weights = planted.chain_weights(LAYERS)
    planted.save_chain(weights, root / "good.onnx")
    planted.save_chain(planted.plant(weights, PLANTED_AT), root / "planted.onnx")
    onnx.save(nan_model(), root / "nan.onnx")
    feeds = planted.inputs(SAMPLES)
    np.savez(root / "x.npz", **feeds)
    reference = planted.forward(weights, feeds[planted.INPUT])[-1]
    np.savez(root / "wrong_reference.npz", **{planted.OUTPUT: reference * 1.1})
    (root / "conftest.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            import pytest

            @pytest.fixture(scope="session")
            def int8_model():
                return Path(__file__).parent / "good.onnx"
            """
        )
    )
    return empty_project


def marker_tests(*models: str) -> str:
    tests = [
        f"""
        @pytest.mark.int8_budget(cosine=0.98)
        def test_{Path(model).stem}(int8_gate):
            int8_gate.check(model=HERE / {model!r})
        """
        for model in models
    ]
    return textwrap.dedent(
        "from pathlib import Path\n\nimport pytest\n\nHERE = Path(__file__).parent\n"
    ) + "".join(textwrap.dedent(test) for test in tests)


def manifest(*entries: str) -> str:
    return "models:\n" + "".join(entries)


def outcomes_by_nodeid(result: pytest.RunResult) -> dict[str, str]:
    """``-rA`` short summary lines -> {nodeid: PASSED/FAILED/ERROR/SKIPPED/...}."""
    found: dict[str, str] = {}
    for line in result.stdout.lines:
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS") and "::" in rest:
            found[rest.split(" - ")[0].strip()] = word
    return found


def gate_records(report: Path) -> dict[str, dict[str, Any]]:
    return {gate["nodeid"]: gate for gate in json.loads(report.read_text())["gates"]}


def test_models_that_must_fail_fail_through_every_entry_point(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_marker=marker_tests("planted.onnx", "nan.onnx", "good.onnx")
        + textwrap.dedent(
            """
            def test_requests_the_gate_but_never_runs_it(int8_gate):
                pass
            """
        )
    )
    (project.path / "int8gate.yaml").write_text(
        manifest(
            "  - {name: planted, model: planted.onnx, calib_data: x.npz}\n",
            "  - {name: nan, model: nan.onnx, calib_data: x.npz}\n",
            "  - {name: control, model: good.onnx, calib_data: x.npz}\n",
        )
    )

    result = project.runpytest(
        "-rA", "--int8-calib-data", "x.npz", "--int8-report-json", "report.json",
        "--int8-model", "planted.onnx", "--int8-model", "nan.onnx", "--int8-model", "good.onnx",
    )  # fmt: skip

    outcomes = outcomes_by_nodeid(result)
    must_fail = [
        "test_marker.py::test_planted",
        "test_marker.py::test_nan",
        "test_marker.py::test_requests_the_gate_but_never_runs_it",
        "planted.onnx::int8_gate",
        "nan.onnx::int8_gate",
        "int8gate.yaml::planted",
        "int8gate.yaml::nan",
    ]
    # the unplanted chain in the same run passes everywhere: the failures are the models', not the harness's
    controls = ["test_marker.py::test_good", "good.onnx::int8_gate", "int8gate.yaml::control"]
    assert outcomes == {**dict.fromkeys(must_fail, "FAILED"), **dict.fromkeys(controls, "PASSED")}, (
        result.stdout.str()
    )
    records = gate_records(project.path / "report.json")
    for nodeid in must_fail[:2] + must_fail[3:]:
        assert records[nodeid]["verdict"] in ("fail", "error"), nodeid
    for nodeid in ("test_marker.py::test_planted", "planted.onnx::int8_gate", "int8gate.yaml::planted"):
        record = records[nodeid]
        assert record["verdict"] == "fail" and record["measured"]["int8"]["cosine"] < 0.5, record
        assert [layer["name"] for layer in record["offending_layers"]] == [planted.layer_name(PLANTED_AT)]
    for nodeid in ("test_marker.py::test_nan", "nan.onnx::int8_gate", "int8gate.yaml::nan"):
        assert records[nodeid]["verdict"] == "error"
        assert "output 'y' is NaN at sample 0" in records[nodeid]["error"], records[nodeid]
    assert all(records[nodeid]["verdict"] == "pass" for nodeid in controls)
    text = result.stdout.str()
    assert (
        "INT8 gate error: test_marker.py::test_requests_the_gate_but_never_runs_it requests the int8_gate "
        "fixture but ran no gate; call int8_gate.check(...) or int8_gate.evaluate(...)." in text
    )
    assert "Traceback" not in text and "INTERNALERROR" not in text


def test_an_fp32_mismatch_fails_through_every_entry_point(project: pytest.Pytester) -> None:
    project.makepyfile(test_marker=marker_tests("good.onnx"))
    (project.path / "int8gate.yaml").write_text(
        manifest(
            "  - {name: mismatch, model: good.onnx, calib_data: x.npz, fp32_reference: wrong_reference.npz}\n"
        )
    )

    result = project.runpytest(
        "-rA", "--int8-calib-data", "x.npz", "--int8-report-json", "report.json",
        "--int8-model", "good.onnx", "--int8-fp32-reference", "wrong_reference.npz",
    )  # fmt: skip

    nodeids = ["test_marker.py::test_good", "good.onnx::int8_gate", "int8gate.yaml::mismatch"]
    assert outcomes_by_nodeid(result) == dict.fromkeys(nodeids, "FAILED"), result.stdout.str()
    records = gate_records(project.path / "report.json")
    for nodeid in nodeids:
        assert records[nodeid]["verdict"] == "fail", nodeid
        # the INT8 numbers alone would pass: the mismatch with the reference is what fails the gate
        assert records[nodeid]["measured"]["int8"]["cosine"] > 0.99, nodeid
    assert "FP32 parity failed: output 'y' of the FP32 engine differs from the reference" in (
        result.stdout.str()
    )

"""Bad inputs through every entry point — the manifest, ``--int8-model`` and a marker test calling
``int8_gate`` — each fail with one sentence that names the file, tensor or key; none passes or skips.

Cases already covered elsewhere are not repeated here (docs/reliability.md lists where each one lives):
corrupt, empty and missing model files and a missing external-data file (test_graph.py, test_plugin.py),
wrong input names, dtypes, shapes, empty data and NaN/Inf data (test_data.py, test_plugin.py), wrong label
counts (test_pipeline.py), malformed manifests (test_manifest.py), marker and ``--int8-budget`` values out of
range (test_plugin.py), bad TensorRT cache text (test_calibrate.py).

Set ``INT8GATE_RELIABILITY_LOG=<file>`` to append every observed message as a JSON line (the source of the
messages quoted in docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.cache import write_checksum
from pytest_int8gate.data import check_labels, load_dataset
from pytest_int8gate.errors import DataError
from pytest_int8gate.graph import load_model

pytestmark = pytest.mark.slow

LOADERS = """
import numpy as np


def raises():
    raise RuntimeError("database unreachable")


def fails_midway():
    yield {"x": np.zeros((4, 4), np.float32)}
    raise OSError("disk gone")


def yields_text():
    yield {"x": [["a", "b", "c", "d"]]}


def yields_a_list():
    yield [np.zeros((4, 4), np.float32)]


def random_each_time():
    yield {"x": np.random.default_rng().normal(size=(16, 4)).astype(np.float32)}
"""


@dataclass(frozen=True)
class Case:
    """One bad input: the model and data it is gated with, and a fragment of the one-sentence message."""

    model: str
    calib: str
    expected: str
    labels: str | None = None

    @property
    def data_level(self) -> bool:
        return self.model == "good.onnx"


CASES = {
    "external_data_escapes": Case(
        "escape.onnx",
        "x.npz",
        "external data file '../../etc/passwd' lies outside the model's folder; refused.",
    ),
    "constant_external_data_escapes": Case(
        "constant_escape.onnx",
        "x.npz",
        "external data file '../../etc/passwd' lies outside the model's folder; refused.",
    ),
    "opset_8_not_convertible": Case(
        "imagescaler_opset8.onnx",
        "x.npz",
        "opset 8 is below 13 (needed for per-channel Q/DQ) and the automatic conversion failed",
    ),
    "opset_99": Case("opset99.onnx", "x.npz", "opset 99 is newer than the newest this onnx"),
    "not_onnx": Case("notes.onnx", "x.npz", "not a readable ONNX model"),
    "rank_mismatch": Case(
        "good.onnx",
        "x_rank3.npz",
        "input 'x' has per-sample shape [4, 1] but the model expects [N, 4] (axis 0 = samples).",
    ),
    "labels_out_of_range": Case(
        "good.onnx",
        "x.npz",
        "labels7.npy: label 7 of sample 1 is not a class; the output has classes 0..2.",
        labels="labels7.npy",
    ),
    "negative_label": Case(
        "good.onnx",
        "x.npz",
        "labels_negative.npy: label -1 of sample 0 is not a class; the output has classes 0..2.",
        labels="labels_negative.npy",
    ),
    "loader_raises": Case(
        "good.onnx",
        "loaders:raises",
        "loaders:raises: the data loader raised RuntimeError: database unreachable",
    ),
    "loader_fails_midway": Case(
        "good.onnx",
        "loaders:fails_midway",
        "loaders:fails_midway: the data loader raised OSError at item 1: disk gone",
    ),
    "loader_yields_text": Case(
        "good.onnx",
        "loaders:yields_text",
        "loaders:yields_text: input 'x' has dtype <U1 but the model expects",
    ),
    "loader_yields_a_list": Case(
        "good.onnx", "loaders:yields_a_list", "loaders:yields_a_list: item 0 is a list, not a dict of arrays."
    ),
    "loader_not_repeatable": Case(
        "good.onnx",
        "loaders:random_each_time",
        "loaders:random_each_time: the data changed between two passes over it",
    ),
}
MODEL_CASES = [name for name, case in CASES.items() if not case.data_level]
DATA_CASES = [name for name, case in CASES.items() if case.data_level]


# ---- the inner project ----------------------------------------------------------------------------------


def probe_graph(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> onnx.GraphProto:
    """x [N, 4] -> ... -> y [N, 3]."""
    return helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializers,
    )


def save(graph: onnx.GraphProto, path: Path, opset: int = 17, ir_version: int | None = None) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    path.write_bytes(model.SerializeToString())


def external(tensor: onnx.TensorProto, location: str) -> onnx.TensorProto:
    """``tensor`` pointing at ``location`` for its data instead of holding it."""
    size = numpy_helper.to_array(tensor).nbytes
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def build_project(root: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3)).astype(np.float32)
    matmul = helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")
    save(probe_graph([matmul], [numpy_helper.from_array(weight, "W")]), root / "good.onnx")
    save(
        probe_graph([matmul], [external(numpy_helper.from_array(weight, "W"), "../../etc/passwd")]),
        root / "escape.onnx",
    )
    # a legitimate external initializer, and a Constant whose tensor attribute reads outside the folder
    weight.tofile(root / "weights.bin")
    constant = external(numpy_helper.from_array(np.ones(3, np.float32), "c"), "../../etc/passwd")
    save(
        probe_graph(
            [
                helper.make_node("Constant", [], ["c"], name="constant", value=constant),
                helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
                helper.make_node("Add", ["h", "c"], ["y"], name="add"),
            ],
            [external(numpy_helper.from_array(weight, "W"), "weights.bin")],
        ),
        root / "constant_escape.onnx",
    )
    # ImageScaler: an experimental op of opset <= 9 that the version converter cannot carry to opset 13
    scaler = helper.make_graph(
        [helper.make_node("ImageScaler", ["x"], ["y"], name="scaler", scale=2.0, bias=[0.0, 0.0, 0.0])],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    save(scaler, root / "imagescaler_opset8.onnx", opset=8, ir_version=3)
    save(probe_graph([matmul], [numpy_helper.from_array(weight, "W")]), root / "opset99.onnx", opset=99)
    (root / "notes.onnx").write_text("release notes: the INT8 model is attached\n")

    x = rng.normal(size=(64, 4)).astype(np.float32)
    np.savez(root / "x.npz", x=x)
    np.savez(root / "x_rank3.npz", x=x[:, :, None])
    np.save(root / "labels7.npy", np.arange(64) % 2 * 7)  # classes 0 and 7 of a 3-class output
    np.save(root / "labels_negative.npy", np.r_[-1, np.zeros(63, np.int64)])
    (root / "loaders.py").write_text(LOADERS)
    (root / "conftest.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            import pytest

            HERE = Path(__file__).parent

            @pytest.fixture(scope="session")
            def int8_model():
                return HERE / "good.onnx"

            @pytest.fixture(scope="session")
            def int8_calibration_data():
                return str(HERE / "x.npz")
            """
        )
    )


@pytest.fixture
def project(empty_project: pytest.Pytester) -> pytest.Pytester:
    build_project(empty_project.path)
    return empty_project


def calib_argument(case: Case) -> str:
    return case.calib  # files relative to the inner rootdir, or module:function


def observed(
    result: pytest.RunResult, report: Path, entry_point: str, verdicts: tuple[str, ...] = ("error",)
) -> dict[str, str]:
    """{nodeid: message} of the run's gates, each of which must have ended in one of ``verdicts``."""
    text = result.stdout.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    messages: dict[str, str] = {}
    for gate in json.loads(report.read_text())["gates"]:
        assert gate["verdict"] in verdicts, gate
        message = gate.get("error") or " ".join(
            finding["message"] for finding in gate.get("diagnostics", []) if finding["severity"] == "failure"
        )
        assert message and "\n" not in message, gate
        messages[gate["nodeid"]] = message
    log = os.environ.get("INT8GATE_RELIABILITY_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            for nodeid, message in messages.items():
                record = {"entry_point": entry_point, "nodeid": nodeid, "message": message}
                handle.write(json.dumps(record) + "\n")
    return messages


def assert_gate_error_line(result: pytest.RunResult, expected: str) -> None:
    lines = [line for line in result.stdout.lines if line.startswith("INT8 gate error: ")]
    assert any(expected in line for line in lines), (expected, lines)


# ---- the three entry points -------------------------------------------------------------------------------


def test_every_bad_input_fails_as_a_manifest_entry(project: pytest.Pytester) -> None:
    lines = ["models:"]
    for name, case in CASES.items():
        lines.append(f"  - name: {name}")
        lines.append(f"    model: {case.model}")
        lines.append(f"    calib_data: {case.calib}")
        if case.labels:
            lines.append(f"    labels: {case.labels}")
    (project.path / "int8gate.yaml").write_text("\n".join(lines) + "\n")

    result = project.runpytest("--int8-report-json", "report.json")

    result.assert_outcomes(failed=len(CASES))
    messages = observed(result, project.path / "report.json", "manifest")
    for name, case in CASES.items():
        assert case.expected in messages[f"int8gate.yaml::{name}"], (name, messages)


def test_every_bad_input_fails_in_a_marker_test(project: pytest.Pytester) -> None:
    tests = ["from pathlib import Path\n\nimport pytest\n\nHERE = Path(__file__).parent\n"]
    for name, case in CASES.items():
        calib = repr(case.calib) if ":" in case.calib else f"str(HERE / {case.calib!r})"
        labels = f", labels=HERE / {case.labels!r}" if case.labels else ""
        tests.append(
            f"\n\n@pytest.mark.int8_budget(cosine=0.5)\ndef test_{name}(int8_gate):\n"
            f"    int8_gate.check(model=HERE / {case.model!r}, calib_data={calib}{labels})\n"
        )
    project.makepyfile(test_inner="".join(tests))

    result = project.runpytest("--int8-report-json", "report.json")

    result.assert_outcomes(failed=len(CASES))
    messages = observed(result, project.path / "report.json", "marker test")
    for name, case in CASES.items():
        assert case.expected in messages[f"test_inner.py::test_{name}"], (name, messages)
    assert_gate_error_line(result, CASES["opset_99"].expected)


def test_every_bad_model_fails_as_an_int8_model_item(project: pytest.Pytester) -> None:
    models = [arg for name in MODEL_CASES for arg in ("--int8-model", CASES[name].model)]

    result = project.runpytest(*models, "--int8-calib-data", "x.npz", "--int8-report-json", "report.json")

    result.assert_outcomes(failed=len(MODEL_CASES))
    messages = observed(result, project.path / "report.json", "--int8-model")
    for name in MODEL_CASES:
        case = CASES[name]
        assert case.expected in messages[f"{case.model}::int8_gate"], (name, messages)


@pytest.mark.parametrize("name", DATA_CASES)
def test_every_bad_data_source_fails_an_int8_model_item(project: pytest.Pytester, name: str) -> None:
    case = CASES[name]
    labels = ("--int8-labels", case.labels) if case.labels else ()

    result = project.runpytest(
        "--int8-model",
        case.model,
        "--int8-calib-data",
        case.calib,
        *labels,
        "--int8-report-json",
        "report.json",
    )

    result.assert_outcomes(failed=1)
    messages = observed(result, project.path / "report.json", "--int8-model")
    assert case.expected in messages[f"{case.model}::int8_gate"], messages
    assert_gate_error_line(result, case.expected)


# ---- a poisoned cache ------------------------------------------------------------------------------------


def test_a_calibration_table_of_another_model_in_the_cache_is_refused_not_used(
    project: pytest.Pytester,
) -> None:
    """The slot of good.onnx receives the (checksummed) table of another model, as a careless copy or a
    shared cache could leave it: the gate fails naming the table; it neither passes nor silently uses it."""
    other = project.path / "other.onnx"
    graph = onnx.load(project.path / "good.onnx")
    graph.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "W"))
    onnx.save(graph, other)
    args = ("--int8-calib-data", "x.npz", "--int8-cache-dir", "cache", "--int8-report-json", "report.json")
    project.runpytest("--int8-model", "good.onnx", *args).assert_outcomes(passed=1)
    (slot,) = (project.path / "cache" / "calibration").glob("*.json")
    shutil.move(slot, project.path / "good_table.json")
    project.runpytest("--int8-model", "other.onnx", *args).assert_outcomes(passed=1)
    (other_table,) = (project.path / "cache" / "calibration").glob("*.json")
    shutil.copy(other_table, slot)
    write_checksum(slot)

    result = project.runpytest("--int8-model", "good.onnx", *args)

    result.assert_outcomes(failed=1)
    messages = observed(result, project.path / "report.json", "--int8-model (cache)", ("fail", "error"))
    message = messages["good.onnx::int8_gate"]
    assert f"stale calibration table {slot}: the model changed" in message, message


# ---- budgets out of range where no other test tries them ---------------------------------------------------

BAD_BUDGETS: dict[str, tuple[dict[str, Any], str]] = {
    "cli_negative_drop": ({"args": ("--int8-budget", "top1_drop=-0.01")}, "top1_drop=-0.01 is out of range"),
    "ini_cosine_above_one": ({"ini": "int8_budget = cosine=1.5\n"}, "cosine=1.5 is out of range"),
    "manifest_cosine_above_one": ({"manifest": "{cosine: 1.5}"}, "cosine=1.5 is out of range"),
    "manifest_negative_drop": ({"manifest": "{top1_drop: -0.01}"}, "top1_drop=-0.01 is out of range"),
    "check_argument": ({"check": "{'cosine': 1.5}"}, "cosine=1.5 is out of range"),
}


@pytest.mark.parametrize(("where", "expected"), BAD_BUDGETS.values(), ids=BAD_BUDGETS.keys())
def test_a_budget_out_of_range_stops_before_any_gate_runs(
    project: pytest.Pytester, where: dict[str, Any], expected: str
) -> None:
    if "ini" in where:
        (project.path / "pytest.ini").write_text("[pytest]\n" + where["ini"])
    if "manifest" in where:
        (project.path / "int8gate.yaml").write_text(
            f"models:\n  - {{name: m, model: good.onnx, calib_data: x.npz, budget: {where['manifest']}}}\n"
        )
    if "check" in where:
        project.makepyfile(
            test_inner=f"def test_check(int8_gate):\n    int8_gate.check(budget={where['check']})\n"
        )

    result = project.runpytest(*where.get("args", ()))

    text = result.stdout.str() + result.stderr.str()
    assert result.ret not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), text
    assert " passed" not in text and expected in text, text
    assert "Traceback" not in text and "INTERNALERROR" not in text


def test_a_negative_label_is_refused_even_when_the_class_count_is_unknown() -> None:
    with pytest.raises(DataError) as info:
        check_labels(np.array([2, 0, -3]), 3, source="labels.npy")
    assert (
        str(info.value) == "labels.npy: label -3 of sample 2 is not a class; a class index is never negative."
    )


REFILLING_LOADER = """
import numpy as np


def refilled():
    buffer = np.empty((8, 4), np.float32)  # one buffer, refilled for every item (a common loader idiom)
    rng = np.random.default_rng(0)
    for _ in range(8):
        buffer[:] = rng.normal(size=(8, 4))
        yield {"x": buffer}


def fresh():
    rng = np.random.default_rng(0)
    for _ in range(8):
        yield {"x": rng.normal(size=(8, 4)).astype(np.float32)}
"""


def test_a_loader_that_refills_one_buffer_gives_the_batches_fresh_arrays_give(tmp_path: Path) -> None:
    """A batch spanning several items must not see the buffer's later contents (found by this suite:
    batches of 32 from 8-sample items held four views of the last item)."""
    (tmp_path / "refilling_loader.py").write_text(REFILLING_LOADER)
    build_project(tmp_path)
    info = load_model(tmp_path / "good.onnx").info

    refilled = load_dataset("refilling_loader:refilled", info, search_path=tmp_path)
    fresh = load_dataset("refilling_loader:fresh", info, search_path=tmp_path)

    assert refilled.fingerprint == fresh.fingerprint
    for size in (3, 8, 32, 64):
        got = np.concatenate([batch["x"] for batch in refilled.batches(size)])
        want = np.concatenate([batch["x"] for batch in fresh.batches(size)])
        np.testing.assert_array_equal(got, want, err_msg=f"batch size {size}")
    assert len(np.unique(got, axis=0)) == 64

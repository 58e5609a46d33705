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
import false_pass_zoo as zoo
import planted
from inner_runs import gates

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


# ---- defaults that see what each output is (tests/false_pass_zoo.py) ------------------------------------

ZOO_CASES = {
    # name: (builder, what the failure text must say)
    "regression": (zoo.regression, "rel_rmse"),
    "offset_logits": (zoo.offset_logits, "top1_agreement"),
    "softmax_head": (zoo.softmax_head, "top1_agreement"),
    "sigmoid_head": (zoo.sigmoid_head, "decision_agreement"),
    "two_outputs": (zoo.two_outputs, "second"),
    "embedding": (zoo.embedding, "rel_rmse"),
}


def _zoo_project(root: Path) -> str:
    """Every zoo model and its twin with data side by side; returns the manifest's entries."""
    calib, evaluation = zoo.inputs(seed=1), zoo.inputs(seed=2)
    np.savez(root / "calib.npz", x=calib)
    np.savez(root / "eval.npz", x=evaluation)
    np.savez(root / "calib16.npz", x=calib.astype(np.float16))
    np.savez(root / "eval16.npz", x=evaluation.astype(np.float16))
    clustered_calib, _ = zoo.clustered(seed=5)
    clustered_eval, labels = zoo.clustered(seed=6)
    np.savez(root / "clustered_calib.npz", x=clustered_calib)
    np.savez(root / "clustered_eval.npz", x=clustered_eval)
    np.savez(root / "one_sample.npz", x=np.repeat(clustered_calib[:1], 600, axis=0))
    np.savez(root / "calib_pm1.npz", x=zoo.inputs(seed=3, low=-1.0, high=1.0))
    np.savez(root / "eval_pm1.npz", x=zoo.inputs(seed=4, low=-1.0, high=1.0))
    np.savez(root / "eval_01.npz", x=zoo.inputs(seed=4, low=0.0, high=1.0))
    entries = []

    def entry(name: str, model: onnx.ModelProto, calib: str = "calib.npz", evaluation: str = "eval.npz",
              extra: str = "") -> None:  # fmt: skip
        zoo.save(model, root / f"{name}.onnx")
        entries.append(
            f"  - {{name: {name}, model: {name}.onnx, calib_data: {calib}, eval_data: {evaluation}{extra}}}\n"
        )

    for name, (build, _) in ZOO_CASES.items():
        entry(f"{name}_broken", build(True))
        entry(f"{name}_benign", build(False))
    entry("nan_output_broken", zoo.nan_second_output(True, evaluation))
    entry("nan_output_benign", zoo.nan_second_output(False, evaluation))
    entry("saturated_broken", zoo.saturated(True))
    entry("saturated_benign", zoo.saturated(False))
    entry("no_layer_broken", zoo.no_quantizable_layer(True))
    entry("no_layer_benign", zoo.no_quantizable_layer(False))
    entry("inside_if_broken", zoo.inside_if(True))
    entry("inside_if_benign", zoo.inside_if(False))
    entry("float16_broken", zoo.float16(True), "calib16.npz", "eval16.npz")
    entry("float16_benign", zoo.float16(False))
    entry("one_sample_broken", zoo.classifier(), "one_sample.npz", "one_sample.npz")
    entry("one_sample_benign", zoo.classifier(), "clustered_calib.npz", "clustered_eval.npz")
    entry("preprocessing_broken", zoo.classifier(), "calib_pm1.npz", "eval_01.npz")
    entry("preprocessing_benign", zoo.classifier(), "calib_pm1.npz", "eval_pm1.npz")
    # labels: the clusters' own classes (benign), or shifted by one class, which FP32 almost never matches
    np.save(root / "labels_own.npy", labels)
    np.save(root / "labels_wrong.npy", (labels + 1) % zoo.CLASSES)
    clustered = ("clustered_calib.npz", "clustered_eval.npz")
    entry("labels_broken", zoo.classifier(), *clustered, extra=", labels: labels_wrong.npy")
    entry("labels_benign", zoo.classifier(), *clustered, extra=", labels: labels_own.npy")
    return "models:\n" + "".join(entries)


ZOO_ERRORS = {
    "nan_output_broken": "output 'log_score' is NaN at sample",
    "saturated_broken": "gives the same values for all",
    "no_layer_broken": "nothing was quantized",
    "inside_if_broken": "nothing was quantized",
    "float16_broken": "nothing was quantized",
    "one_sample_broken": "1 distinct sample",
    "labels_broken": "do not look like this model's",
}
ZOO_FAILURES = {
    **{f"{name}_broken": why for name, (_, why) in ZOO_CASES.items()},
    "preprocessing_broken": "failed: preprocessing-mismatch",
}


def test_default_budgets_fail_every_broken_output_kind_and_pass_its_twin(
    empty_project: pytest.Pytester,
) -> None:
    """No budget anywhere: each broken model of the zoo FAILs or ERRORs with a reason on its line; each
    benign twin PASSes. The old default (cosine >= 0.98 on the first output) passed every broken one."""
    root = empty_project.path
    (root / "int8gate.yaml").write_text(_zoo_project(root))

    result = empty_project.runpytest("-rA", "--int8-no-bisect", "--int8-report-json", "report.json")

    records = gates(root / "report.json")
    text = result.stdout.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    for name, why in ZOO_ERRORS.items():
        assert records[name]["verdict"] == "error", (name, records[name])
        assert why in records[name]["error"], (name, records[name]["error"])
    for name, why in ZOO_FAILURES.items():
        assert records[name]["verdict"] == "fail", (name, records[name])
        assert why in _summary_line(text, name), (name, text)
    benign = sorted(name for name in records if name.endswith("_benign"))
    assert len(benign) == len(ZOO_ERRORS) + len(ZOO_FAILURES)
    assert [records[name]["verdict"] for name in benign] == ["pass"] * len(benign), {
        name: records[name].get("error") or records[name]["verdict"] for name in benign
    }
    # an embedding is judged as one (cosine, spread), never by whether its largest coordinate agrees
    embedding = records["embedding_benign"]["outputs"][0]
    assert embedding["kind"] == "embeddings" and "top1_agreement" not in embedding["int8"], embedding
    # the twin passes on its varying output and says its constant one measured nothing
    constant = [f for f in records["saturated_benign"]["diagnostics"] if f["code"] == "constant-output"]
    assert constant and "'dead_scores'" in constant[0]["message"], records["saturated_benign"]["diagnostics"]


def _summary_line(text: str, name: str) -> str:
    """The int8gate summary row of gate ``name``."""
    summary = text.split("= int8gate =", 1)[1]
    rows = [line for line in summary.splitlines() if line.split()[:1] == [name]]
    assert rows, (name, summary)
    return rows[0]


def test_a_budget_marker_on_a_test_that_runs_no_gate_is_a_collection_error(
    empty_project: pytest.Pytester,
) -> None:
    empty_project.makepyfile(
        test_markers=textwrap.dedent(
            """
            import pytest

            @pytest.mark.int8_budget(cosine=0.98)
            def test_forgot_the_gate():
                pass

            @pytest.mark.int8_budget(cosine=0.98)
            def test_gated(int8_gate):
                pass
            """
        )
    )
    result = empty_project.runpytest("--co", "-q")
    text = result.stdout.str()
    assert (
        "test_markers.py::test_forgot_the_gate: @int8_budget is set but the test does not request the "
        "int8_gate fixture, so no gate runs and the budget gates nothing" in text
    ), text
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error stops the run before any test


def test_budget_keys_merge_across_ini_command_line_and_manifest_with_their_sources(
    project: pytest.Pytester,
) -> None:
    """One command-line key keeps the ini file's other keys; the manifest's looser cosine wins (it is more
    specific) and says so in a warning; the report names where each key came from."""
    (project.path / "pytest.ini").write_text(
        "[pytest]\nint8_budget =\n    cosine=0.999\n    max_abs_error=9\n"
    )
    (project.path / "int8gate.yaml").write_text(
        manifest("  - {name: chain, model: good.onnx, calib_data: x.npz, budget: {cosine: 0.5}}\n")
    )
    result = project.runpytest(
        "--int8-budget", "sqnr_db=1", "--int8-no-bisect", "--int8-report-json", "report.json", "-rA"
    )
    record = gates(project.path / "report.json")["chain"]
    assert record["budget"] == {"cosine": 0.5, "max_abs_error": 9.0, "sqnr_db": 1.0}, record["budget"]
    assert record["budget_sources"] == {
        "cosine": "manifest",
        "max_abs_error": "ini",
        "sqnr_db": "--int8-budget",
    }
    loosened = [f for f in record["diagnostics"] if f["code"] == "budget-loosened"]
    assert [f["message"] for f in loosened] == [
        "budget cosine >= 0.5 from manifest loosens cosine >= 0.999 from ini."
    ], record["diagnostics"]
    assert "warning budget-loosened: budget cosine >= 0.5 from manifest loosens" in result.stdout.str()

"""The pytest plugin, run through ``pytester``: options and ini keys, the marker, fixtures, zero-code items,
the failure text, the terminal summary, the JSON report, JUnit properties, the cache and failing closed.

Every inner run gets its own ``pytest.ini`` in ``pytester.path`` so the project's configuration is not
picked up; the example project's real model and data are copied into the inner project (``project`` in
``conftest.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from example_files import CALIB, DATA_ARGS, DIGITS
from inner_runs import failure_section, output_of
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.backends.tensorrt import unavailable_reason as tensorrt_unavailable_reason
from pytest_int8gate.gate import valid_keys_text
from pytest_int8gate.settings import name_of, negative_flag, surface

# Every option with its ini twin, from the settings table (a flag on by default also has its off switch).
OPTION_INI = {
    flag: name_of(setting.ini)
    for setting in surface("option")
    for flag in (
        [name_of(setting.option), negative_flag(name_of(setting.option))]
        if setting.kind == "flag" and setting.default is True
        else [name_of(setting.option)]
    )
}

# An inner test that dumps the run's resolved options (command line over ini, paths made absolute).
PROBE = """
import dataclasses, json
from pathlib import Path

from pytest_int8gate.plugin import STATE


def test_probe(pytestconfig):
    options = pytestconfig.stash[STATE].options
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    values["models"] = [str(m) for m in values["models"]]
    values["budget"] = dict(values["budget"].limits)
    Path(__file__).with_name("probe.json").write_text(json.dumps(values, default=str))
"""


def write_ini(pytester: pytest.Pytester, text: str) -> None:
    """``pytest.ini`` in the inner project's root (its rootdir and ini folder)."""
    (pytester.path / "pytest.ini").write_text(textwrap.dedent(text).lstrip())


def gates(report: Path) -> dict[str, dict[str, Any]]:
    """The JSON report's gate records by name, as ``inner_runs.gates``, after checking the report's tool."""
    payload = json.loads(report.read_text())
    assert payload["tool"] == "pytest-int8gate"
    return {gate["name"]: gate for gate in payload["gates"]}


def assert_usage_error(result: pytest.RunResult, *fragments: str) -> None:
    text = output_of(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert "Traceback" not in text


def assert_rejected_before_running(result: pytest.RunResult, *fragments: str) -> None:
    """A usage error or a collection error (either stops the run before any test) with ``fragments``."""
    text = output_of(result)
    assert result.ret in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERRUPTED), text
    assert not re.search(r"\b\d+ passed\b", text), text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert "Traceback" not in text and "INTERNALERROR" not in text and "int8gate/plugin/" not in text


def save_model(path: Path, nodes: list[onnx.NodeProto], weight: np.ndarray) -> Path:
    """A [N, 4] -> [N, 3] model: ``h = x @ W`` (a quantizable layer) followed by ``nodes`` producing y."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"), *nodes],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# ---- options and ini keys ---------------------------------------------------------------------------


def test_every_option_and_its_ini_key_are_in_the_help(project: pytest.Pytester) -> None:
    result = project.runpytest("--help")

    assert result.ret == pytest.ExitCode.OK
    text = result.stdout.str()
    assert "INT8 quantization gate (pytest-int8gate)" in text
    for flag, ini in OPTION_INI.items():
        assert flag in text, flag
        assert f"{ini} (" in text, ini  # the ini section lists "name (type):"


def test_defaults_without_any_option(project: pytest.Pytester) -> None:
    project.makepyfile(test_inner_probe=PROBE)

    project.runpytest("-k", "probe").assert_outcomes(passed=1)

    options = json.loads((project.path / "probe.json").read_text())
    root = project.path.resolve()
    assert options == {
        "models": [],
        "qdq_model": None,
        "calib_data": None,
        "eval_data": None,
        "labels": None,
        "budget": {},
        "calibrator": "entropy",
        "placement": "minimal",
        "backend": "onnxruntime",
        "ort_mode": "simulated",
        "bisect": True,
        "bisect_strategy": "adaptive",
        "bisect_subset": 200,
        "bisect_max_evaluations": 200,
        "bisect_max_seconds": 1800.0,
        "cache_dir": str(root / ".pytest_cache" / "d" / "int8gate"),
        "report_json": None,
        "report_md": None,
        "report_html": None,
        "baseline": None,
        "baseline_tolerance": {},
        "fp32_reference": None,
        "min_calib_samples": 500,
        "strict_ci": False,
        "check_determinism": False,
        "manifest": None,
        "output": None,
        "batch_size": 32,
        "max_samples": 100_000,
        "data_timeout": 300.0,
        "percentile": 99.99,
        "rootdir": str(root),
        "repairs": ["calibrator", "equalize", "bias_correction", "smoothquant"],
        "constants": {},
        "sample_axes": {},
    }


@pytest.fixture
def configured(project: pytest.Pytester) -> pytest.Pytester:
    """Every ini key set, with paths relative to the ini file's folder; ``sub/`` holds a probe test."""
    root = project.path
    (root / "models").mkdir()
    (root / "data").mkdir()
    (root / "gates").mkdir()
    shutil.move(root / "digits_cnn.onnx", root / "models" / "digits_cnn.onnx")
    for name in ("calib.npz", "eval.npz", "eval_labels.npy"):
        shutil.move(root / name, root / "data" / name)
    (root / "gates" / "models.yaml").write_text(
        "models:\n  - {name: ini_entry, model: ../models/digits_cnn.onnx, calib_data: ../data/calib.npz}\n"
    )
    write_ini(
        project,
        """
        [pytest]
        int8_models = models/digits_cnn.onnx
        int8_calib_data = data/calib.npz
        int8_eval_data = data/eval.npz
        int8_labels = data/eval_labels.npy
        int8_budget =
            top1_drop=0.02
            cosine=0.97
        int8_calibrator = percentile
        int8_backend = auto
        int8_ort_mode = fused
        int8_bisect = false
        int8_bisect_strategy = linear
        int8_bisect_subset = 64
        int8_bisect_max_evals = 9
        int8_cache_dir = build/cache
        int8_report_json = build/report.json
        int8_manifest = gates/models.yaml
        int8_output = logits
        int8_batch_size = 16
        int8_max_samples = 5000
        int8_data_timeout = 60
        int8_percentile = 99.9
        int8_repair =
            calibrator
            bias_correction
        """,
    )
    sub = root / "sub"
    sub.mkdir()
    (sub / "test_inner_probe.py").write_text(PROBE)
    shutil.copy(DIGITS, sub / "other.onnx")
    (sub / "alt.yaml").write_text("models:\n  - {name: cli_entry, model: other.onnx, calib_data: c.npz}\n")
    return project


def test_ini_keys_resolve_paths_against_the_ini_files_folder(
    configured: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = configured.path.resolve()
    monkeypatch.chdir(root / "sub")  # invoked from a subfolder: ini paths must not follow the cwd

    configured.runpytest("-k", "probe").assert_outcomes(passed=1)

    options = json.loads((root / "sub" / "probe.json").read_text())
    assert options == {
        "models": [str(root / "models" / "digits_cnn.onnx")],
        "qdq_model": None,
        "calib_data": str(root / "data" / "calib.npz"),
        "eval_data": str(root / "data" / "eval.npz"),
        "labels": str(root / "data" / "eval_labels.npy"),
        "budget": {"top1_drop": 0.02, "cosine": 0.97},
        "calibrator": "percentile",
        "placement": "minimal",
        "backend": "auto",
        "ort_mode": "fused",
        "bisect": False,
        "bisect_strategy": "linear",
        "bisect_subset": 64,
        "bisect_max_evaluations": 9,
        "bisect_max_seconds": 1800.0,
        "cache_dir": str(root / "build" / "cache"),
        "report_json": str(root / "build" / "report.json"),
        "report_md": None,
        "report_html": None,
        "baseline": None,
        "baseline_tolerance": {},
        "fp32_reference": None,
        "min_calib_samples": 500,
        "strict_ci": False,
        "check_determinism": False,
        "manifest": str(root / "gates" / "models.yaml"),
        "output": "logits",
        "batch_size": 16,
        "max_samples": 5000,
        "data_timeout": 60.0,
        "percentile": 99.9,
        "rootdir": str(root),
        "repairs": ["calibrator", "bias_correction"],
        "constants": {},
        "sample_axes": {},
    }


def test_command_line_wins_over_ini_and_resolves_paths_against_the_invocation_dir(
    configured: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = configured.path.resolve()
    sub = root / "sub"
    monkeypatch.chdir(sub)

    configured.runpytest(
        "-k", "probe",
        "--int8-model", "other.onnx",
        "--int8-calib-data", "c.npz",
        "--int8-eval-data", "e.npz",
        "--int8-labels", "l.npy",
        "--int8-budget", "sqnr_db=30",
        "--int8-budget", "max_abs_error=2,cosine_min=0.9",
        "--int8-calibrator", "mse",
        "--int8-backend", "onnxruntime",
        "--int8-ort-mode", "simulated",
        "--int8-bisect",
        "--int8-bisect-strategy", "binary",
        "--int8-bisect-subset", "32",
        "--int8-bisect-max-evals", "5",
        "--int8-cache-dir", "c",
        "--int8-report-json", "r.json",
        "--int8-manifest", "alt.yaml",
        "--int8-output", "out",
        "--int8-batch-size", "8",
        "--int8-max-samples", "1000",
        "--int8-data-timeout", "2.5",
        "--int8-percentile", "99.5",
        "--int8-repair", "none",
    ).assert_outcomes(passed=1)  # fmt: skip

    options = json.loads((sub / "probe.json").read_text())
    assert options == {
        "models": [str(sub / "other.onnx")],
        "qdq_model": None,
        "calib_data": str(sub / "c.npz"),
        "eval_data": str(sub / "e.npz"),
        "labels": str(sub / "l.npy"),
        # key by key: the command line's keys on top of the ini file's
        "budget": {
            "top1_drop": 0.02,
            "cosine": 0.97,
            "sqnr_db": 30.0,
            "max_abs_error": 2.0,
            "cosine_min": 0.9,
        },
        "calibrator": "mse",
        "placement": "minimal",
        "backend": "onnxruntime",
        "ort_mode": "simulated",
        "bisect": True,
        "bisect_strategy": "binary",
        "bisect_subset": 32,
        "bisect_max_evaluations": 5,
        "bisect_max_seconds": 1800.0,
        "cache_dir": str(sub / "c"),
        "report_json": str(sub / "r.json"),
        "report_md": None,
        "report_html": None,
        "baseline": None,
        "baseline_tolerance": {},
        "fp32_reference": None,
        "min_calib_samples": 500,
        "strict_ci": False,
        "check_determinism": False,
        "manifest": str(sub / "alt.yaml"),
        "output": "out",
        "batch_size": 8,
        "max_samples": 1000,
        "data_timeout": 2.5,
        "percentile": 99.5,
        "rootdir": str(root),
        "repairs": [],
        "constants": {},
        "sample_axes": {},
    }


@pytest.mark.parametrize(
    ("ini", "flag", "expected"), [("true", "--int8-no-bisect", False), ("false", "--int8-bisect", True)]
)
def test_bisect_flags_override_the_ini(project: pytest.Pytester, ini: str, flag: str, expected: bool) -> None:
    write_ini(project, f"[pytest]\nint8_bisect = {ini}\n")
    project.makepyfile(test_inner_probe=PROBE)

    project.runpytest("-k", "probe", flag).assert_outcomes(passed=1)

    assert json.loads((project.path / "probe.json").read_text())["bisect"] is expected


def test_ini_paths_in_pyproject_toml_and_list_values(project: pytest.Pytester) -> None:
    (project.path / "pytest.ini").unlink()
    project.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        int8_models = ["digits_cnn.onnx"]
        int8_calib_data = "calib.npz"
        int8_budget = ["cosine=0.97", "sqnr_db=20"]
        int8_bisect = false
        int8_batch_size = "16"
        """
    )
    project.makepyfile(test_inner_probe=PROBE)

    project.runpytest().assert_outcomes(passed=2)  # the probe and the ini model's gate

    options = json.loads((project.path / "probe.json").read_text())
    assert options["models"] == [str(project.path.resolve() / "digits_cnn.onnx")]
    assert options["budget"] == {"cosine": 0.97, "sqnr_db": 20.0}
    assert options["bisect"] is False
    assert options["batch_size"] == 16


BAD_OPTION_VALUES = [
    (("--int8-budget", "cosin=0.9"), ("--int8-budget", "'cosin'", valid_keys_text())),
    (("--int8-budget", "cosine"), ("--int8-budget", "'cosine' is not KEY=VALUE")),
    (("--int8-budget", "cosine=2"), ("--int8-budget", "cosine=2 is out of range")),
    (("--int8-batch-size", "0"), ("--int8-batch-size", "must be at least 1")),
    (("--int8-batch-size", "many"), ("--int8-batch-size", "'many' is not a number")),
    (("--int8-bisect-subset", "1.5"), ("--int8-bisect-subset", "not a number")),
    (("--int8-bisect-max-evals", "0"), ("--int8-bisect-max-evals", "must be at least 1")),
    (("--int8-percentile", "abc"), ("--int8-percentile", "not a number")),
    (("--int8-percentile", "0"), ("--int8-percentile",)),
    (("--int8-percentile", "150"), ("--int8-percentile", "150")),
    (("--int8-model", "nothere.onnx"), ("--int8-model", "nothere.onnx not found")),
    (("--int8-manifest", "nothere.yaml"), ("--int8-manifest", "nothere.yaml not found")),
]


@pytest.mark.parametrize(
    ("args", "fragments"), BAD_OPTION_VALUES, ids=["=".join(args) for args, _ in BAD_OPTION_VALUES]
)
def test_bad_option_values_are_usage_errors_naming_the_option(
    project: pytest.Pytester, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = project.runpytest(*args)

    assert_usage_error(result, *fragments)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("int8_calibrator", "minmax"),
        ("int8_backend", "tensorrt11"),
        ("int8_ort_mode", "quick"),
        ("int8_bisect_strategy", "random"),
    ],
)
def test_ini_choice_keys_reject_unknown_values(project: pytest.Pytester, key: str, value: str) -> None:
    write_ini(project, f"[pytest]\n{key} = {value}\n")

    assert_usage_error(project.runpytest(), key, repr(value))


def test_command_line_choices_are_checked_by_the_parser(project: pytest.Pytester) -> None:
    result = project.runpytest("--int8-calibrator", "minmax")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'minmax'" in result.stderr.str()


# ---- zero-code items ---------------------------------------------------------------------------------


def test_zero_code_gate_from_a_directory_without_tests_or_conftest(project: pytest.Pytester) -> None:
    assert not list(project.path.glob("*.py"))

    result = project.runpytest("--int8-model", "digits_cnn.onnx", *DATA_ARGS, "-v")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["digits_cnn.onnx::int8_gate PASSED*"])


def test_int8_model_is_repeatable_and_each_model_is_one_item(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--int8-model", "digits_cnn.onnx", "--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS,
        "--int8-no-bisect", "--co", "-q",
    )  # fmt: skip

    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["digits_cnn.onnx::int8_gate", "digits_cnn_outlier.onnx::int8_gate"])
    result.stdout.fnmatch_lines(["2 tests collected*"])


def test_ini_int8_models_become_items(project: pytest.Pytester) -> None:
    write_ini(project, "[pytest]\nint8_models =\n    digits_cnn.onnx\n    digits_cnn_outlier.onnx\n")

    result = project.runpytest("--co", "-q")

    result.stdout.fnmatch_lines(["digits_cnn.onnx::int8_gate", "digits_cnn_outlier.onnx::int8_gate"])


def test_models_outside_the_rootdir_get_sane_unique_node_ids_and_run(
    project: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # a sibling of the rootdir, not below it
    shutil.copy(DIGITS, elsewhere / "digits_cnn.onnx")
    shutil.copy(DIGITS, elsewhere / "second.onnx")

    result = project.runpytest(
        "--rootdir", str(project.path),
        "--int8-model", str(elsewhere / "digits_cnn.onnx"),
        "--int8-model", str(elsewhere / "second.onnx"),
        *DATA_ARGS, "--int8-report-json", "report.json", "-v",
    )  # fmt: skip

    result.assert_outcomes(passed=2)
    records = gates(project.path / "report.json")
    nodeids = sorted(gate["nodeid"] for gate in records.values())
    assert len(set(nodeids)) == 2, nodeids
    assert nodeids[0].endswith("digits_cnn.onnx::int8_gate"), nodeids
    assert nodeids[1].endswith("second.onnx::int8_gate"), nodeids
    assert not any(nodeid.startswith("::") for nodeid in nodeids), nodeids
    assert {gate["verdict"] for gate in records.values()} == {"pass"}


# ---- header --------------------------------------------------------------------------------------------


def test_header_warns_when_there_is_no_held_out_evaluation_set(project: pytest.Pytester) -> None:
    without = project.runpytest("--int8-model", "digits_cnn.onnx", "--int8-calib-data", "calib.npz", "--co")
    with_eval = project.runpytest("--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--co")

    write_ini(project, "[pytest]\nint8_calib_data = calib.npz\n")
    ini_without = project.runpytest("--co")
    write_ini(project, "[pytest]\nint8_calib_data = calib.npz\nint8_eval_data = eval.npz\n")
    ini_with_eval = project.runpytest("--co")

    for result in (without, ini_without):
        result.stdout.fnmatch_lines(["int8gate: WARNING no --int8-eval-data*calibration data*"])
    for result in (with_eval, ini_with_eval):
        assert "WARNING" not in result.stdout.str()


def test_header_names_the_backend_actually_used_under_auto(project: pytest.Pytester) -> None:
    result = project.runpytest("--int8-backend", "auto", "--co")

    result.stdout.fnmatch_lines(
        [
            "int8gate: backend onnxruntime * (requested: auto)",
            "int8gate: calibrator entropy; bisection adaptive*",
        ]
    )


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and a GPU are present here")
@pytest.mark.parametrize("where", ["cli", "ini"])
def test_tensorrt_backend_without_tensorrt_is_an_error_never_a_pass_or_skip(
    project: pytest.Pytester, where: str
) -> None:
    args: list[str] = ["--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-report-json", "report.json"]
    if where == "cli":
        args += ["--int8-backend", "tensorrt"]
    else:
        write_ini(project, "[pytest]\nint8_backend = tensorrt\n")

    result = project.runpytest(*args)

    result.assert_outcomes(failed=1)
    section = failure_section(result)
    error_lines = [line for line in section.splitlines() if line.startswith("INT8 gate error:")]
    assert len(error_lines) == 1, section
    assert "tensorrt" in error_lines[0].lower() and "requested" in error_lines[0]
    assert error_lines[0].rstrip().endswith(".")
    assert "int8gate/plugin/" not in result.stdout.str()
    result.stdout.fnmatch_lines(["int8gate: backend unavailable: *tensorrt*(requested: tensorrt)"])
    assert gates(project.path / "report.json")["digits_cnn.onnx"]["verdict"] == "error"


# ---- the marker ------------------------------------------------------------------------------------


def test_marker_is_registered_for_strict_markers_users(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest

        @pytest.mark.int8_budget(cosine=0.98, top1_drop=0.01)
        def test_marked(int8_gate):
            pass
        """
    )

    collected = project.runpytest("--strict-markers", "--co", "-q")
    assert collected.ret == pytest.ExitCode.OK, collected.stdout.str()
    project.runpytest("--markers").stdout.fnmatch_lines(["@pytest.mark.int8_budget(**limits)*cosine*"])


@pytest.mark.parametrize(
    ("marker", "fragments"),
    [
        ("int8_budget(cosin=0.98)", ("unknown budget key 'cosin'", f"valid keys are {valid_keys_text()}")),
        ("int8_budget(0.98)", ("keyword limits only",)),
        ("int8_budget(cosine=1.5)", ("cosine=1.5 is out of range",)),
        ("int8_budget(top1_drop=-0.1)", ("top1_drop=-0.1 is out of range",)),
        ("int8_budget(cosine='high')", ("must be a number",)),
    ],
)
def test_invalid_marker_stops_the_run_naming_the_test(
    project: pytest.Pytester, marker: str, fragments: tuple[str, ...]
) -> None:
    project.makepyfile(
        test_inner_budget=f"""
        import pytest

        def test_fine():
            pass

        @pytest.mark.{marker}
        def test_bad():
            pass
        """
    )

    result = project.runpytest("--strict-markers")

    assert_rejected_before_running(result, "test_inner_budget.py::test_bad", *fragments)


def test_class_level_marker_is_validated_too(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_inner_budget="""
        import pytest

        @pytest.mark.int8_budget(cosinus=0.9)
        class TestGroup:
            def test_one(self):
                pass
        """
    )

    assert_rejected_before_running(
        project.runpytest(), "test_inner_budget.py::TestGroup::test_one", "'cosinus'"
    )


# ---- fixtures ------------------------------------------------------------------------------------------

FIXTURE_CONFTEST = """
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def int8_model():
    return HERE / "digits_cnn.onnx"


@pytest.fixture(scope="session")
def int8_calibration_data():
    return {"input": np.load(HERE / "calib.npz")["input"][:100]}  # in-memory arrays


@pytest.fixture(scope="session")
def int8_eval_data():
    return {"input": np.load(HERE / "eval.npz")["input"][:300]}
"""


def test_overridden_fixtures_with_in_memory_data_and_the_marker_budget(project: pytest.Pytester) -> None:
    project.makeconftest(FIXTURE_CONFTEST)
    project.makepyfile(
        test_inner_gate="""
        from pathlib import Path

        import numpy as np
        import pytest

        HERE = Path(__file__).parent

        @pytest.mark.int8_budget(cosine=0.5)
        def test_marker_budget_overrides_the_command_line(int8_gate, int8_model):
            verdict = int8_gate.check()
            assert verdict.model == str(int8_model)
            assert dict(verdict.budget.limits) == {"cosine": 0.5}
            assert verdict.calibration_samples == 100
            assert verdict.eval_samples == 300
            assert verdict.passed

        def test_command_line_budget_applies_without_a_marker(int8_gate):
            int8_gate.check()

        @pytest.mark.int8_budget(top1_drop=0.01, cosine=0.9)
        def test_evaluate_with_in_memory_batches_and_labels(int8_gate):
            batches = {"input": np.load(HERE / "eval.npz")["input"]}
            labels = np.load(HERE / "eval_labels.npy")
            verdict = int8_gate.evaluate(batches, labels=labels)
            assert verdict.eval_samples == 500
            assert verdict.fp32["top1"] == pytest.approx(0.974, abs=0.002)
            assert {r.name: r.limit for r in verdict.results} == {"top1_drop": 0.01, "cosine": 0.9}
            assert verdict.passed
        """
    )

    result = project.runpytest("--int8-budget", "cosine=0.9999999", "-rf")

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["FAILED test_inner_gate.py::test_command_line_budget_applies_without_a_marker*"]
    )
    section = failure_section(result)
    assert "INT8 gate failed: test_command_line_budget_applies_without_a_marker[digits_cnn.onnx]" in section
    assert any(line.startswith("  cosine") and line.endswith("FAIL") for line in section.splitlines())
    assert "Traceback" not in section and "int8gate/plugin/" not in section


def test_engines_are_session_scoped_and_run_a_batch(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_inner_engines="""
        from pathlib import Path

        import numpy as np

        HERE = Path(__file__).parent
        SEEN = []

        def test_first(fp32_engine, int8_engine):
            batch = {"input": np.load(HERE / "eval.npz")["input"][:16]}
            fp32 = fp32_engine.run(batch)["logits"]
            int8 = int8_engine.run(batch)["logits"]
            assert fp32.shape == int8.shape == (16, 10)
            assert np.isfinite(int8).all()
            assert not np.array_equal(fp32, int8)  # the INT8 engine really quantizes
            assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9
            SEEN.append((fp32_engine, int8_engine))

        def test_second(fp32_engine, int8_engine):
            assert SEEN[0][0] is fp32_engine and SEEN[0][1] is int8_engine
        """
    )

    result = project.runpytest(
        "--int8-model", "digits_cnn.onnx", "--int8-calib-data", "calib.npz", "-p", "no:randomly"
    )

    result.assert_outcomes(passed=3)  # the two tests and the --int8-model gate


def test_session_engines_are_released_when_the_session_ends(project: pytest.Pytester) -> None:
    project.makeconftest(
        """
        from pathlib import Path

        import numpy as np

        ENGINES = []

        def pytest_unconfigure(config):
            batch = {"input": np.load(Path(__file__).parent / "eval.npz")["input"][:2]}
            states = []
            for engine in ENGINES:
                try:
                    engine.run(batch)
                    states.append("open")
                except Exception as exc:
                    states.append(type(exc).__name__ + ": " + str(exc))
            (Path(__file__).parent / "engines.txt").write_text("\\n".join(states))
        """
    )
    project.makepyfile(
        test_inner_engines="""
        import conftest

        def test_engines(fp32_engine, int8_engine):
            conftest.ENGINES.extend([fp32_engine, int8_engine])
        """
    )

    result = project.runpytest_subprocess("--int8-calib-data", "calib.npz", "--int8-model", "digits_cnn.onnx")

    result.assert_outcomes(passed=2)
    states = (project.path / "engines.txt").read_text().splitlines()
    assert states == [
        "BackendError: the ONNX Runtime fp32 runner was closed.",
        "BackendError: the ONNX Runtime int8 runner was closed.",
    ]


def test_missing_calibration_data_names_the_option_and_the_fixture(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_inner_gate="""
        def test_gate(int8_gate):
            int8_gate.check()
        """
    )

    result = project.runpytest("-k", "test_inner_gate", "--int8-model", "digits_cnn.onnx")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*no calibration data; pass --int8-calib-data*'int8_calibration_data' fixture*"]
    )
    assert "int8gate/plugin/" not in result.stdout.str()


def test_int8_model_fixture_needs_exactly_one_model(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_inner_gate="""
        def test_gate(int8_model):
            pass
        """
    )

    result = project.runpytest("test_inner_gate.py", "--int8-calib-data", "calib.npz")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--int8-model*'int8_model' fixture*"])


def test_kpi_callable_with_kpi_drop(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_inner_kpi="""
        from pathlib import Path

        import numpy as np
        import pytest

        HERE = Path(__file__).parent

        def accuracy(outputs, labels):
            return float((outputs.argmax(axis=1) == labels).mean())

        @pytest.mark.int8_budget(kpi_drop=0.01)
        def test_kpi_passes(int8_gate):
            verdict = int8_gate.check(kpi=accuracy, labels=np.load(HERE / "eval_labels.npy"))
            (result,) = verdict.results
            assert result.name == "kpi_drop"
            assert result.fp32 == pytest.approx(0.974, abs=0.002)
            assert abs(result.fp32 - result.int8) <= 0.01

        @pytest.mark.int8_budget(kpi_drop=0.01)
        def test_kpi_fails_on_the_outlier_model(int8_gate):
            int8_gate.check(
                model=HERE / "digits_cnn_outlier.onnx", calibrator="max", kpi=accuracy,
                labels=np.load(HERE / "eval_labels.npy"),
            )

        @pytest.mark.int8_budget(kpi_drop=0.01)
        def test_kpi_drop_without_a_kpi(int8_gate):
            int8_gate.check()
        """
    )

    result = project.runpytest(
        "test_inner_kpi.py", "--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-no-bisect"
    )

    result.assert_outcomes(passed=2, failed=2)  # with the --int8-model gate
    section = failure_section(result)
    assert "INT8 gate failed: test_kpi_fails_on_the_outlier_model[digits_cnn_outlier.onnx]" in section
    assert any(line.strip().startswith("kpi_drop") and line.endswith("FAIL") for line in section.splitlines())
    assert "budget kpi_drop needs int8_gate.check(..., kpi=callable)" in section
    assert "int8gate/plugin/" not in section


def test_int8_gate_check_applies_equalization_and_bias_correction(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_inner_repairs="""
        from pathlib import Path

        import pytest

        HERE = Path(__file__).parent

        @pytest.mark.int8_budget(top1_drop=0.01, cosine=0.98)
        def test_outlier_equalized(int8_gate):
            verdict = int8_gate.check(
                model=HERE / "digits_cnn_outlier.onnx", calibrator="max", equalize=["/conv2/Conv"],
                bias_correction=["/fc2/Gemm"],
            )
            assert verdict.quantized_layers == 5
            assert verdict.plan["equalize"] == ["/conv2/Conv"]
            assert verdict.plan["bias_correction"] == ["/fc2/Gemm"]

        @pytest.mark.int8_budget(top1_drop=0.01, cosine=0.98)
        def test_outlier_every_pair(int8_gate):
            verdict = int8_gate.check(model=HERE / "digits_cnn_outlier.onnx", calibrator="max", equalize=True)
            assert verdict.plan["equalize"] == ["/conv2/Conv", "/conv3/Conv", "/fc1/Gemm", "/fc2/Gemm"]
        """
    )

    result = project.runpytest(
        "test_inner_repairs.py", "--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-no-bisect"
    )

    result.assert_outcomes(passed=3)  # with the --int8-model gate


# ---- the failure text, summary and reports ------------------------------------------------------------


def test_failing_gate_shows_table_offending_layer_verified_fix_and_snippet(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS, "--int8-calibrator", "max"
    )

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "INT8 gate failed: digits_cnn_outlier.onnx  [[]onnxruntime * | max | calibration 600, "
            "evaluation 500 samples | 5 of 5 quantizable layers in INT8, * % of MACs | output logits[]]",
            "  no budget configured; defaults by output kind: 'logits': top1_drop <= 0.01, "
            "top1_agreement >= 0.95, cosine >= 0.98 (class scores*",
            "  metric * fp32 * int8 * drop * limit * result",
            "  top1_drop * 0.9740 * 0.1000 * 0.8740 * <= 0.01 * FAIL",
            "  cosine * >= 0.98 * FAIL",
            "Offending layers (adaptive search (*): * evaluations over 5 quantized layers on 200 samples*",
            "* /conv2/Conv * Conv * stays INT8 via equalization with /conv1/Conv",
            "* tried: percentile not tried (own SQNR *); mse not tried (*); max not tried (*)",
            "Verified fix on all 500 evaluation samples and on the 300 the search never used: "
            "equalize [[]/conv2/Conv[]] -> top1_drop 0.0*PASS",
            "Equalized FP32 model (deploy this one): */equalized/*.onnx  sha256 *",
            "  its FP32 outputs differ from the original's by at most * (largest output 44.8, 500 samples)",
            "Apply it in int8gate.yaml (under the model's entry):",
            "  equalize:",
            '    - "/conv2/Conv"',
        ]
    )
    text = output_of(result)
    assert "int8gate/plugin/" not in text
    assert "Traceback" not in text
    assert "pytest_int8gate" not in failure_section(result)


def test_without_rewrites_the_failing_gate_keeps_the_offender_in_float(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS, "--int8-calibrator", "max",
        "--int8-repair", "calibrator",
    )  # fmt: skip

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "* /conv2/Conv * Conv * keep in float",
            "* tried: percentile not tried (own SQNR *); mse not tried (*); max not tried (*)",
            "Verified fix on all 500 evaluation samples and on the 300 the search never used: "
            "exclude [[]/conv2/Conv[]] -> top1_drop 0.0*PASS",
            "Apply it in int8gate.yaml (under the model's entry):",
            "  exclude:",
            '    - "/conv2/Conv"',
        ]
    )
    assert "Equalized FP32 model" not in output_of(result)


def test_summary_has_one_row_per_gated_model(project: pytest.Pytester) -> None:
    shutil.copy(DIGITS, project.path / "copy_cnn.onnx")
    result = project.runpytest(
        "--int8-model", "digits_cnn.onnx", "--int8-model", "copy_cnn.onnx",
        "--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS, "--int8-calibrator", "max",
    )  # fmt: skip

    result.assert_outcomes(passed=2, failed=1)
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.strip("= ") == "int8gate" and line.startswith("="))
    rows = [line for line in lines[start + 1 :] if line.strip()]
    rows = rows[: next(i for i, line in enumerate(rows) if line.startswith("="))]
    by_name = {row.split()[0]: row for row in rows}
    assert len(rows) == len(by_name) == 3, rows
    assert {name: row.split()[1] for name, row in by_name.items()} == {
        "digits_cnn.onnx": "PASS",
        "copy_cnn.onnx": "PASS",
        "digits_cnn_outlier.onnx": "FAIL",
    }
    assert "offenders /conv2/Conv" in by_name["digits_cnn_outlier.onnx"]
    assert "top1_drop 0.8740" in by_name["digits_cnn_outlier.onnx"]


REQUIRED_RECORD_KEYS = {
    "model", "nodeid", "verdict", "metrics", "backend", "calibrator", "samples", "offending_layers",
    "evaluations", "duration_s",
}  # fmt: skip


def test_json_report_has_every_gate_with_its_numbers(project: pytest.Pytester) -> None:
    (project.path / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(512))
    result = project.runpytest(
        "--int8-model", "digits_cnn.onnx", "--int8-model", "digits_cnn_outlier.onnx",
        "--int8-model", "corrupt.onnx", *DATA_ARGS, "--int8-calibrator", "max",
        "--int8-report-json", "out/report.json",
    )  # fmt: skip

    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [f"int8gate: JSON report written to {project.path.resolve()}/out/report.json"]
    )
    records = gates(project.path / "out" / "report.json")
    assert set(records) == {"digits_cnn.onnx", "digits_cnn_outlier.onnx", "corrupt.onnx"}
    for record in records.values():
        assert set(record) >= REQUIRED_RECORD_KEYS, (record["name"], REQUIRED_RECORD_KEYS - set(record))

    good, bad, corrupt = (
        records["digits_cnn.onnx"],
        records["digits_cnn_outlier.onnx"],
        records["corrupt.onnx"],
    )
    assert good["model"] == str(project.path.resolve() / "digits_cnn.onnx")
    assert good["nodeid"] == "digits_cnn.onnx::int8_gate"
    assert good["verdict"] == "pass"
    assert set(good["metrics"]) == {"top1_drop", "top1_agreement", "cosine"}  # labelled defaults
    top1 = good["metrics"]["top1_drop"]
    assert set(top1) >= {"fp32", "int8", "delta", "limit", "passed"}
    assert top1["fp32"] == pytest.approx(0.974, abs=0.002)
    assert top1["delta"] == pytest.approx(top1["int8"] - top1["fp32"])
    assert top1["limit"] == 0.01 and top1["passed"] is True
    assert good["metrics"]["cosine"]["fp32"] is None and good["metrics"]["cosine"]["int8"] > 0.99
    assert good["backend"]["backend"] == "onnxruntime" and good["backend"]["mode"] == "simulated"
    assert good["calibrator"] == "max"
    assert good["samples"] == {"calibration": 600, "evaluation": 500}
    assert good["offending_layers"] == []
    assert good["evaluations"] == 1
    assert good["duration_s"] > 0

    assert bad["verdict"] == "fail"
    assert bad["metrics"]["top1_drop"]["passed"] is False and bad["metrics"]["top1_drop"]["int8"] < 0.5
    assert [layer["name"] for layer in bad["offending_layers"]] == ["/conv2/Conv"]
    offender = bad["offending_layers"][0]
    assert (offender["action"], offender["producer"]) == ("equalize", "/conv1/Conv")
    # own SQNR rules the other calibrators out (the adaptive search spends no evaluation on them)
    assert [a.split(" (")[0] for a in offender["attempts"]] == [
        "percentile not tried",
        "mse not tried",
        "max not tried",
    ]
    assert bad["evaluations"] > 1  # the gate's evaluation plus the bisection's
    fix = bad["bisection"]["fix"]
    assert fix["passed"] is True
    assert (fix["exclude"], fix["equalize"], fix["bias_correction"]) == ([], ["/conv2/Conv"], [])
    assert hashlib.sha256(Path(fix["fp32_model"]).read_bytes()).hexdigest() == fix["fp32_sha256"]
    assert 0 < fix["fp32_max_abs_difference"] < 1e-5 * fix["fp32_reference_max_abs"]

    assert corrupt["verdict"] == "error"
    assert "corrupt.onnx" in corrupt["error"]
    assert corrupt["metrics"] == {} and corrupt["offending_layers"] == []


def test_junit_xml_carries_the_key_metrics_as_properties(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--int8-model", "digits_cnn.onnx", "--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS,
        "--int8-calibrator", "max", "--junitxml", "junit.xml",
    )  # fmt: skip

    result.assert_outcomes(passed=1, failed=1)
    cases = {case.get("classname"): case for case in ET.parse(project.path / "junit.xml").iter("testcase")}
    props = {
        name: {p.get("name"): p.get("value") for p in case.iter("property")} for name, case in cases.items()
    }
    good, bad = props["digits_cnn.onnx"], props["digits_cnn_outlier.onnx"]
    assert good["int8gate_verdict"] == "pass" and bad["int8gate_verdict"] == "fail"
    assert good["int8gate_calibrator"] == "max"
    assert good["int8gate_backend"].startswith("onnxruntime ")
    assert float(good["int8gate_fp32_top1"]) == pytest.approx(0.974, abs=0.002)
    assert float(good["int8gate_int8_cosine"]) > 0.99
    assert float(bad["int8gate_int8_top1"]) < 0.5
    assert bad["int8gate_offending_layers"] == "/conv2/Conv"
    assert {"int8gate_int8_sqnr_db", "int8gate_int8_max_abs_error", "int8gate_int8_top1_agreement"} <= set(
        good
    )
    assert cases["digits_cnn_outlier.onnx"].find("failure") is not None


def test_second_run_reuses_the_cached_calibration_with_identical_numbers(project: pytest.Pytester) -> None:
    args = ("--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-cache-dir", "cache")

    first = project.runpytest(*args, "--int8-report-json", "first.json")
    second = project.runpytest(*args, "--int8-report-json", "second.json")

    first.assert_outcomes(passed=1)
    second.assert_outcomes(passed=1)
    assert list((project.path / "cache" / "calibration").glob("*.json"))
    assert "cached:" not in first.stdout.str()
    second.stdout.fnmatch_lines(["digits_cnn.onnx * PASS *cached: calibration table*"])
    before, after = (
        gates(project.path / "first.json")["digits_cnn.onnx"],
        gates(project.path / "second.json")["digits_cnn.onnx"],
    )
    assert before["cache_hits"] == []
    assert "calibration table" in after["cache_hits"]
    assert after["metrics"] == before["metrics"]
    assert after["measured"] == before["measured"]


def test_cache_dir_and_report_paths_from_ini_and_command_line(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project.path.resolve()
    write_ini(project, "[pytest]\nint8_cache_dir = build/cache\nint8_report_json = build/report.json\n")
    sub = root / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    model_args = ("--int8-model", "../digits_cnn.onnx", "--int8-calib-data", "../calib.npz")

    project.runpytest(*model_args).assert_outcomes(passed=1)
    project.runpytest(*model_args, "--int8-cache-dir", "c", "--int8-report-json", "r.json").assert_outcomes(
        passed=1
    )

    assert list((root / "build" / "cache" / "calibration").glob("*.json"))
    assert gates(root / "build" / "report.json")["digits_cnn.onnx"]["verdict"] == "pass"
    assert list((sub / "c" / "calibration").glob("*.json"))
    assert gates(sub / "r.json")["digits_cnn.onnx"]["verdict"] == "pass"


# ---- the extra options, end to end ----------------------------------------------------------------------


def test_bisection_options_shape_the_search(project: pytest.Pytester) -> None:
    base = ("--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS, "--int8-calibrator", "max")

    linear = project.runpytest(
        *base,
        "--int8-bisect-strategy",
        "linear",
        "--int8-bisect-subset",
        "50",
        "--int8-report-json",
        "a.json",
    )
    capped = project.runpytest(*base, "--int8-bisect-max-evals", "1", "--int8-report-json", "b.json")
    disabled = project.runpytest(*base, "--int8-no-bisect", "--int8-report-json", "c.json")

    for result in (linear, capped, disabled):
        result.assert_outcomes(failed=1)
    search = gates(project.path / "a.json")["digits_cnn_outlier.onnx"]["bisection"]
    assert search["strategy"] == "linear"
    assert search["subset_size"] == 50
    assert [layer["name"] for layer in search["offending_layers"]] == ["/conv2/Conv"]
    cap = gates(project.path / "b.json")["digits_cnn_outlier.onnx"]["bisection"]
    assert cap["search_evaluations"] + cap["repair_evaluations"] <= 1
    assert any("cap of 1 evaluations" in note for note in cap["notes"])
    capped.stdout.fnmatch_lines(["Note: stopped at the cap of 1 evaluations*"])
    off = gates(project.path / "c.json")["digits_cnn_outlier.onnx"]
    assert off["bisection"] is None and off["evaluations"] == 1
    disabled.stdout.fnmatch_lines(["Offending layers: not searched (bisection disabled*"])


def test_ort_mode_output_batch_size_and_percentile_reach_the_gate(project: pytest.Pytester) -> None:
    base = ("--int8-model", "digits_cnn.onnx", *DATA_ARGS, "--int8-budget", "cosine=-1")  # always passes

    fused = project.runpytest(*base, "--int8-ort-mode", "fused", "--int8-report-json", "fused.json")
    batched = project.runpytest(*base, "--int8-batch-size", "7", "--int8-report-json", "batched.json")
    default = project.runpytest(*base, "--int8-output", "logits", "--int8-report-json", "default.json")
    narrow = project.runpytest(
        *base, "--int8-calibrator", "percentile", "--int8-percentile", "50", "--int8-report-json", "p50.json"
    )
    wrong_output = project.runpytest(*base, "--int8-output", "probabilities")

    for result in (fused, batched, default, narrow):
        result.assert_outcomes(passed=1)
    record = {
        name: gates(project.path / f"{name}.json")["digits_cnn.onnx"]
        for name in ("fused", "batched", "default", "p50")
    }
    assert record["fused"]["backend"]["mode"] == "fused"
    assert record["default"]["backend"]["mode"] == "simulated"
    # batching does not change the numbers
    for key, value in record["default"]["measured"]["int8"].items():
        assert record["batched"]["measured"]["int8"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # a 50th-percentile range clips most activations: much worse than the default entropy calibration
    assert record["p50"]["calibrator"] == "percentile"
    assert (
        record["p50"]["measured"]["int8"]["cosine"] < record["default"]["measured"]["int8"]["cosine"] - 0.01
    )
    wrong_output.assert_outcomes(failed=1)
    wrong_output.stdout.fnmatch_lines(["INT8 gate error: *'probabilities'*logits*"])


# ---- failing closed -----------------------------------------------------------------------------------


def test_corrupt_model_file_fails_with_a_gate_error_naming_it(project: pytest.Pytester) -> None:
    (project.path / "broken.onnx").write_bytes(np.random.default_rng(1).bytes(2000))

    result = project.runpytest("--int8-model", "broken.onnx", *DATA_ARGS)

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["INT8 gate error: *broken.onnx*"])
    assert "int8gate/plugin/" not in result.stdout.str()


def test_data_with_the_wrong_input_name_fails_naming_the_input(project: pytest.Pytester) -> None:
    images = np.load(CALIB)["input"]
    np.savez(project.path / "wrong.npz", image=images)

    result = project.runpytest("--int8-model", "digits_cnn.onnx", "--int8-calib-data", "wrong.npz")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["INT8 gate error: *wrong.npz*'input'*'image'*"])


def test_missing_data_file_fails_naming_it(project: pytest.Pytester) -> None:
    result = project.runpytest("--int8-model", "digits_cnn.onnx", "--int8-calib-data", "nothere.npz")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["INT8 gate error: *nothere.npz*"])


def test_zero_code_item_without_calibration_data_fails_naming_the_option(project: pytest.Pytester) -> None:
    result = project.runpytest("--int8-model", "digits_cnn.onnx")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["INT8 gate error: *no calibration data; pass --int8-calib-data*"])


@pytest.mark.parametrize("op", ["Log", "Div"])
def test_non_finite_model_outputs_fail_never_pass(project: pytest.Pytester, op: str) -> None:
    rng = np.random.default_rng(0)
    if op == "Log":  # log of the negative half of x @ W: NaN
        nodes = [helper.make_node("Log", ["h"], ["y"], name="log")]
    else:  # h / (h - h): division by zero, +-Inf
        nodes = [
            helper.make_node("Sub", ["h", "h"], ["zero"], name="sub"),
            helper.make_node("Div", ["h", "zero"], ["y"], name="div"),
        ]
    save_model(project.path / "nonfinite.onnx", nodes, rng.normal(size=(4, 3)).astype(np.float32))
    np.savez(project.path / "x.npz", x=rng.normal(size=(64, 4)).astype(np.float32))

    result = project.runpytest(
        "--int8-model", "nonfinite.onnx", "--int8-calib-data", "x.npz", "--int8-budget", "cosine=-1",
        "--int8-report-json", "report.json",
    )  # fmt: skip

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["INT8 gate error: *'y'*"])
    assert any(word in result.stdout.str() for word in ("NaN", "Inf", "inf", "non-finite"))
    assert gates(project.path / "report.json")["nonfinite.onnx"]["verdict"] == "error"

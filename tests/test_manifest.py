"""The ``int8gate.yaml`` manifest: validation key by key (``load_manifest``), and through ``pytester`` its
entries as test items, collection errors, ``exclude:`` / ``calibrator_overrides:``, and the failure text's
manifest snippet applied back into a manifest.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from example_files import CALIB, DATA_ARGS, DIGITS, EXAMPLE_FILES
from inner_runs import gates

from pytest_int8gate.gate import valid_keys_text
from pytest_int8gate.manifest import ENTRY_KEYS, ManifestError, load_manifest
from pytest_int8gate.quantize import CALIBRATORS

DATA = {"calib_data": "calib.npz", "eval_data": "eval.npz", "labels": "eval_labels.npy"}


def manifest_text(*entries: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """A manifest with one flow-style (JSON) mapping per entry; JSON is YAML."""
    head = f"defaults: {json.dumps(defaults)}\n" if defaults else ""
    return head + "models:\n" + "".join(f"  - {json.dumps(entry)}\n" for entry in entries)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A folder with the two example models and the data files, for ``load_manifest`` unit tests."""
    for source in EXAMPLE_FILES:
        shutil.copy(source, tmp_path / source.name)
    return tmp_path


# ---- load_manifest -------------------------------------------------------------------------------------


def test_entries_with_defaults_resolved_paths_and_names(models_dir: Path) -> None:
    (models_dir / "sub").mkdir()
    shutil.copy(DIGITS, models_dir / "sub" / "digits_cnn.onnx")
    manifest = write(
        models_dir / "int8gate.yaml",
        f"""
        defaults:
          calib_data: calib.npz
          budget: {{cosine: 0.97, sqnr_db: 20}}
          calibrator: max
        models:
          - name: plain
            model: digits_cnn.onnx
          - name: "my model/v2"
            model: {models_dir / "digits_cnn_outlier.onnx"}
            eval_data: eval.npz
            labels: eval_labels.npy
            budget: {{cosine: 0.5, top1_drop: 0.02}}
            calibrator: entropy
            exclude: ["/conv2/Conv"]
            calibrator_overrides: {{"/fc1/Gemm": percentile}}
            equalize: ["/conv2/Conv"]
            bias_correction: ["/fc2/Gemm"]
            repairs: [calibrator]
            percentile: 99.9
            batch_size: 16
            bisect: false
            bisect_strategy: linear
            bisect_subset: 50
            ort_mode: fused
            backend: onnxruntime
            output: logits
          - model: sub/digits_cnn.onnx
            calib_data: mypackage.loaders:calibration
        """,
    )

    plain, renamed, by_stem = load_manifest(manifest)

    root = models_dir.resolve()
    assert plain.name == "plain"
    assert plain.values["model"] == str(root / "digits_cnn.onnx")
    assert plain.values["calib_data"] == str(root / "calib.npz")
    assert plain.values["calibrator"] == "max"
    assert dict(plain.budget.limits) == {"cosine": 0.97, "sqnr_db": 20.0}

    assert renamed.name == "my_model_v2"  # safe in a node id
    assert renamed.values["model"] == str(models_dir / "digits_cnn_outlier.onnx")  # absolute: kept
    assert renamed.values["eval_data"] == str(root / "eval.npz")
    assert renamed.values["labels"] == str(root / "eval_labels.npy")
    assert dict(renamed.budget.limits) == {"cosine": 0.5, "sqnr_db": 20.0, "top1_drop": 0.02}
    assert renamed.values["calibrator"] == "entropy"
    assert renamed.values["exclude"] == ["/conv2/Conv"]
    assert renamed.values["calibrator_overrides"] == {"/fc1/Gemm": "percentile"}
    assert renamed.values["bisect"] is False
    assert renamed.values["equalize"] == ["/conv2/Conv"]
    assert renamed.values["bias_correction"] == ["/fc2/Gemm"]
    assert renamed.values["repairs"] == ["calibrator"]

    assert by_stem.name == "digits_cnn"  # the model's file stem
    assert by_stem.values["model"] == str(root / "sub" / "digits_cnn.onnx")
    assert by_stem.values["calib_data"] == "mypackage.loaders:calibration"  # a loader spec is not a path


def test_a_bare_list_is_a_manifest(models_dir: Path) -> None:
    manifest = write(models_dir / "m.yaml", "- {model: digits_cnn.onnx, calib_data: calib.npz}\n")

    (entry,) = load_manifest(manifest)

    assert entry.name == "digits_cnn"
    assert entry.path("calib_data") == str(models_dir.resolve() / "calib.npz")
    assert entry.path("eval_data") is None


VALID_ENTRY_KEYS = ", ".join(ENTRY_KEYS)
ENTRY = "  - name: a\n    model: digits_cnn.onnx\n    calib_data: calib.npz\n"
BAD_MANIFESTS = {
    "unknown_key": (
        f"models:\n{ENTRY}    bogus: 1\n",
        ["entry 1 (a)", "unknown key 'bogus'", f"valid keys are {VALID_ENTRY_KEYS}"],
    ),
    "wrong_type": (f"models:\n{ENTRY}    batch_size: x\n", ["entry 1 (a)", "'batch_size'", "'x'"]),
    "bool_for_int": (f"models:\n{ENTRY}    batch_size: true\n", ["entry 1 (a)", "'batch_size'", "True"]),
    "bool_for_float": (f"models:\n{ENTRY}    percentile: true\n", ["entry 1 (a)", "'percentile'", "True"]),
    "zero_batch": (f"models:\n{ENTRY}    batch_size: 0\n", ["entry 1 (a)", "'batch_size'", "positive"]),
    "exclude_string": (f"models:\n{ENTRY}    exclude: /conv2/Conv\n", ["entry 1 (a)", "'exclude'", "list"]),
    "exclude_numbers": (f"models:\n{ENTRY}    exclude: [1, 2]\n", ["entry 1 (a)", "'exclude'", "strings"]),
    "equalize_string": (
        f"models:\n{ENTRY}    equalize: /conv2/Conv\n",
        ["entry 1 (a)", "'equalize'", "true, false or a list of layer names"],
    ),
    "equalize_numbers": (f"models:\n{ENTRY}    equalize: [2]\n", ["entry 1 (a)", "'equalize'", "strings"]),
    "bias_correction_bool": (
        f"models:\n{ENTRY}    bias_correction: true\n",
        ["entry 1 (a)", "'bias_correction'", "a list of layer names"],
    ),
    "unknown_repair": (
        f"models:\n{ENTRY}    repairs: [calibrator, magic]\n",
        ["entry 1 (a)", "'repairs'", "calibrator, equalize, bias_correction", "'magic'"],
    ),
    "bad_calibrator": (
        f"models:\n{ENTRY}    calibrator: minmax\n",
        ["entry 1 (a)", "'calibrator'", ", ".join(CALIBRATORS), "'minmax'"],
    ),
    "bad_override": (
        f"models:\n{ENTRY}    calibrator_overrides: {{/conv2/Conv: kl}}\n",
        ["entry 1 (a)", "calibrator_overrides['/conv2/Conv']", "'kl'"],
    ),
    "bad_percentile": (f"models:\n{ENTRY}    percentile: 0\n", ["entry 1 (a)", "'percentile'", "(0, 100]"]),
    "bad_backend": (f"models:\n{ENTRY}    backend: cuda\n", ["entry 1 (a)", "'backend'", "'cuda'"]),
    "bad_bisect": (f"models:\n{ENTRY}    bisect: maybe\n", ["entry 1 (a)", "'bisect'", "true or false"]),
    "name_not_string": (
        "models:\n  - {name: 3, model: digits_cnn.onnx, calib_data: calib.npz}\n",
        ["entry 1", "'name'", "a string"],
    ),
    "missing_model_key": ("models:\n  - name: a\n    calib_data: calib.npz\n", ["entry 1 (a)", "'model'"]),
    "missing_calib_data": (
        "models:\n  - name: a\n    model: digits_cnn.onnx\n",
        ["entry 1 (a)", "'calib_data'"],
    ),
    "duplicate_names": (f"models:\n{ENTRY}{ENTRY}", ["entry 2 (a)", "'a' is used twice", "'name'"]),
    "duplicate_stems": (
        "models:\n  - {model: digits_cnn.onnx, calib_data: calib.npz}\n"
        "  - {model: ./digits_cnn.onnx, calib_data: calib.npz}\n",
        ["entry 2", "'digits_cnn' is used twice"],
    ),
    "bad_budget_key": (
        f"models:\n{ENTRY}    budget: {{cosin: 0.9}}\n",
        ["entry 1 (a)", "budget", "'cosin'", valid_keys_text()],
    ),
    "bad_budget_value": (
        f"models:\n{ENTRY}    budget: {{cosine: 2}}\n",
        ["entry 1 (a)", "budget", "cosine=2", "out of range"],
    ),
    "budget_not_mapping": (f"models:\n{ENTRY}    budget: 0.98\n", ["entry 1 (a)", "'budget'", "mapping"]),
    "defaults_with_model": (
        f"defaults:\n  model: digits_cnn.onnx\nmodels:\n{ENTRY}",
        ["defaults", "unknown key 'model'"],
    ),
    "entry_not_mapping": ("models:\n  - digits_cnn.onnx\n", ["entry 1", "mapping"]),
    "models_not_list": ("models: {a: 1}\n", ["'models'", "list"]),
    "empty_models": ("models: []\n", ["'models'", "non-empty"]),
    "top_level_typo": (f"model:\n{ENTRY}", ["unknown top-level key", "'model'", "models, defaults"]),
    "scalar": ("just text\n", ["'models:' list"]),
    "invalid_yaml": ("models: [\n  - {name: a\n", ["not valid YAML"]),
}


@pytest.mark.parametrize(("text", "fragments"), BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_bad_manifests_name_the_file_the_entry_and_the_key(
    models_dir: Path, text: str, fragments: list[str]
) -> None:
    manifest = write(models_dir / "int8gate.yaml", text)

    with pytest.raises(ManifestError) as excinfo:
        load_manifest(manifest)

    message = str(excinfo.value)
    assert message.startswith(f"{manifest}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message  # one sentence


def test_unreadable_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        load_manifest(tmp_path / "absent.yaml")


def test_a_model_file_that_does_not_exist_is_a_manifest_error(models_dir: Path) -> None:
    manifest = write(
        models_dir / "int8gate.yaml", "models:\n  - {name: a, model: nothere.onnx, calib_data: calib.npz}\n"
    )

    with pytest.raises(ManifestError) as excinfo:
        load_manifest(manifest)

    message = str(excinfo.value)
    assert str(manifest) in message
    assert "entry 1 (a)" in message and "'model'" in message and "nothere.onnx" in message


# ---- through pytest ------------------------------------------------------------------------------------

# ``project`` (conftest.py): an inner project with its own ini, the example models and data, no tests.


def test_entries_become_items_named_after_the_manifest(project: pytest.Pytester) -> None:
    write(
        project.path / "int8gate.yaml",
        manifest_text(
            {"name": "digits", "model": "digits_cnn.onnx", **DATA},
            {"model": "digits_cnn_outlier.onnx", **DATA, "exclude": ["/conv2/Conv"]},
        ),
    )

    listed = project.runpytest("--co", "-q")
    result = project.runpytest("-v", "--int8-report-json", "report.json")

    listed.stdout.fnmatch_lines(["int8gate.yaml::digits", "int8gate.yaml::digits_cnn_outlier"])
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["int8gate.yaml::digits PASSED*", "int8gate.yaml::digits_cnn_outlier PASSED*"]
    )
    records = gates(project.path / "report.json")
    assert records["digits"]["nodeid"] == "int8gate.yaml::digits"
    # labels given, no budget: the defaults of labelled class scores
    assert set(records["digits"]["metrics"]) == {"top1_drop", "top1_agreement", "cosine"}


BAD_ENTRIES = {
    "unknown_key": (
        "    bogus: 1\n",
        ["entry 1 (digits)", "unknown key 'bogus'", "valid keys are name, model"],
    ),
    "wrong_type": ("    batch_size: many\n", ["entry 1 (digits)", "'batch_size'", "'many'"]),
    "bad_budget": ("    budget: {cosin: 0.9}\n", ["entry 1 (digits)", "'cosin'", valid_keys_text()]),
}


@pytest.mark.parametrize(("extra", "fragments"), BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_bad_entry_is_a_collection_error_without_a_traceback(
    project: pytest.Pytester, extra: str, fragments: list[str]
) -> None:
    manifest = write(
        project.path / "int8gate.yaml",
        "models:\n  - name: digits\n    model: digits_cnn.onnx\n    calib_data: calib.npz\n" + extra,
    )

    result = project.runpytest()

    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR collecting int8gate.yaml*"])
    text = result.stdout.str()
    assert f"{manifest.resolve()}: " in text
    for fragment in fragments:
        assert fragment in text, fragment
    assert "Traceback" not in text and "int8gate/plugin/" not in text and "manifest.py" not in text


@pytest.mark.parametrize(
    ("entries", "fragments"),
    [
        ("  - {name: a, calib_data: calib.npz}\n", ["entry 1 (a)", "'model'"]),
        (
            "  - {name: a, model: nothere.onnx, calib_data: calib.npz}\n",
            ["entry 1 (a)", "'model'", "nothere.onnx"],
        ),
        (
            "  - {name: a, model: digits_cnn.onnx, calib_data: calib.npz}\n"
            "  - {name: a, model: digits_cnn_outlier.onnx, calib_data: calib.npz}\n",
            ["entry 2 (a)", "'a' is used twice", "'name'"],
        ),
    ],
    ids=["missing_model_key", "missing_model_file", "duplicate_names"],
)
def test_missing_model_and_duplicate_names_are_collection_errors(
    project: pytest.Pytester, entries: str, fragments: list[str]
) -> None:
    write(project.path / "int8gate.yaml", "models:\n" + entries)

    result = project.runpytest()

    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert "int8gate.yaml: " in text
    for fragment in fragments:
        assert fragment in text, fragment
    assert "Traceback" not in text and "int8gate/plugin/" not in text


def test_exclude_and_calibrator_overrides_are_applied(project: pytest.Pytester) -> None:
    outlier = {"model": "digits_cnn_outlier.onnx", **DATA}
    write(
        project.path / "int8gate.yaml",
        manifest_text(
            {"name": "as_is", **outlier},
            {"name": "conv2_in_float", **outlier, "exclude": ["/conv2/Conv"]},
            {
                "name": "conv2_entropy",
                **outlier,
                "budget": {"cosine": -1, "top1_drop": 1},
                "calibrator_overrides": {"/conv2/Conv": "entropy"},
            },
            defaults={"calibrator": "max", "bisect": False},
        ),
    )

    result = project.runpytest("--int8-report-json", "report.json")

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*Offending layers: not searched (bisection disabled*"])  # bisect: false
    records = gates(project.path / "report.json")
    as_is, in_float, entropy = records["as_is"], records["conv2_in_float"], records["conv2_entropy"]
    assert as_is["verdict"] == "fail" and as_is["plan"]["exclude"] == []
    assert in_float["verdict"] == "pass"
    assert in_float["plan"]["exclude"] == ["/conv2/Conv"]
    assert in_float["layers"] == {"quantized": 4, "quantizable": 5}
    assert in_float["measured"]["int8"]["top1"] >= in_float["measured"]["fp32"]["top1"] - 0.01
    assert entropy["plan"] == {
        "calibrator": "max",
        "exclude": [],
        "overrides": {"/conv2/Conv": "entropy"},
        "include": None,
    }
    # the override changes the numbers: conv2's range no longer comes from the max calibrator
    assert entropy["measured"]["int8"]["cosine"] != pytest.approx(
        as_is["measured"]["int8"]["cosine"], abs=1e-3
    )


def test_equalize_and_bias_correction_keys_reach_the_gate(project: pytest.Pytester) -> None:
    outlier = {"model": "digits_cnn_outlier.onnx", **DATA, "calibrator": "max"}
    write(
        project.path / "int8gate.yaml",
        manifest_text(
            {"name": "every_pair", **outlier, "equalize": True},
            {"name": "conv2", **outlier, "equalize": ["/conv2/Conv"], "bias_correction": ["/fc1/Gemm"]},
            {"name": "off", **outlier, "equalize": False, "bisect": False},
        ),
    )

    result = project.runpytest("--int8-report-json", "report.json")

    result.assert_outcomes(passed=2, failed=1)
    records = gates(project.path / "report.json")
    every_pair, conv2, off = records["every_pair"], records["conv2"], records["off"]
    assert every_pair["plan"]["equalize"] == ["/conv2/Conv", "/conv3/Conv", "/fc1/Gemm", "/fc2/Gemm"]
    assert (conv2["plan"]["equalize"], conv2["plan"]["bias_correction"]) == (["/conv2/Conv"], ["/fc1/Gemm"])
    for passing in (every_pair, conv2):
        assert passing["verdict"] == "pass"
        assert passing["layers"] == {"quantized": 5, "quantizable": 5}
    assert off["verdict"] == "fail" and "equalize" not in off["plan"]


def test_excluding_an_unknown_layer_fails_naming_it(project: pytest.Pytester) -> None:
    write(
        project.path / "int8gate.yaml",
        """
        models:
          - {name: typo, model: digits_cnn.onnx, calib_data: calib.npz, exclude: ["/conv9/Conv"]}
        """,
    )

    result = project.runpytest()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["INT8 gate error: */conv9/Conv*"])


@pytest.mark.parametrize(
    ("repair_args", "expected_snippet", "quantized"),
    [
        ((), ["equalize:", '  - "/conv2/Conv"'], 5),  # the ladder keeps /conv2/Conv INT8
        (("--int8-repair", "calibrator"), ["exclude:", '  - "/conv2/Conv"'], 4),  # no rewrites: float
    ],
    ids=["equalize", "float"],
)
def test_the_printed_manifest_snippet_applied_makes_the_gate_pass(
    project: pytest.Pytester, repair_args: tuple[str, ...], expected_snippet: list[str], quantized: int
) -> None:
    failing = project.runpytest(
        "--int8-model", "digits_cnn_outlier.onnx", *DATA_ARGS, "--int8-calibrator", "max", *repair_args
    )
    failing.assert_outcomes(failed=1)
    lines = failing.stdout.lines
    start = lines.index("Apply it in int8gate.yaml (under the model's entry):") + 1
    snippet = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        snippet.append(line[2:])
    assert snippet == expected_snippet

    entry = ["  - name: outlier", "    model: digits_cnn_outlier.onnx", "    calibrator: max"]
    entry += ["    calib_data: calib.npz", "    eval_data: eval.npz", "    labels: eval_labels.npy"]
    (project.path / "int8gate.yaml").write_text(
        "\n".join(["models:", *entry, *("    " + line for line in snippet)]) + "\n"
    )
    fixed = project.runpytest("int8gate.yaml", "-v", "--int8-report-json", "fixed.json")

    fixed.assert_outcomes(passed=1)
    fixed.stdout.fnmatch_lines(["int8gate.yaml::outlier PASSED*"])
    layers = gates(project.path / "fixed.json")["outlier"]["layers"]
    assert layers == {"quantized": quantized, "quantizable": 5}


def test_manifest_paths_are_relative_to_its_folder_and_the_option_to_the_invocation_dir(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        project.path / "gates" / "release.yaml",
        """
        models:
          - name: digits
            model: ../digits_cnn.onnx
            calib_data: ../calib.npz
        """,
    )
    work = project.path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    by_option = project.runpytest("--int8-manifest", "../gates/release.yaml", "-v")
    monkeypatch.chdir(project.path)
    (project.path / "pytest.ini").write_text("[pytest]\nint8_manifest = gates/release.yaml\n")
    by_ini = project.runpytest("-v")

    by_option.assert_outcomes(passed=1)
    by_option.stdout.fnmatch_lines(["../gates/release.yaml::digits PASSED*"])  # shown relative to the cwd
    by_ini.assert_outcomes(passed=1)
    by_ini.stdout.fnmatch_lines(["gates/release.yaml::digits PASSED*"])


def test_a_manifest_outside_the_rootdir_gets_sane_node_ids(
    project: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("release")  # a sibling of the rootdir, not below it
    shutil.copy(DIGITS, elsewhere / "digits_cnn.onnx")
    shutil.copy(CALIB, elsewhere / "calib.npz")
    manifest = write(
        elsewhere / "gates.yaml",
        manifest_text({"name": "digits", "model": "digits_cnn.onnx", "calib_data": "calib.npz"}),
    )

    result = project.runpytest(
        "--rootdir", str(project.path), "--int8-manifest", str(manifest), "--int8-report-json", "r.json"
    )

    result.assert_outcomes(passed=1)
    nodeid = gates(project.path / "r.json")["digits"]["nodeid"]
    assert nodeid.endswith("gates.yaml::digits"), nodeid


def test_the_default_manifest_is_int8gate_yaml_in_the_rootdir(project: pytest.Pytester) -> None:
    write(
        project.path / "int8gate.yaml",
        "models:\n  - {name: digits, model: digits_cnn.onnx, calib_data: calib.npz}\n",
    )
    write(project.path / "elsewhere" / "int8gate.yaml", "models:\n  - {name: ignored, model: nothere.onnx}\n")
    project.makepyfile(test_inner_a="def test_a():\n    pass\n")

    everything = project.runpytest("--co", "-q", "--ignore", "elsewhere")
    one_file = project.runpytest("test_inner_a.py", "-q")

    everything.stdout.fnmatch_lines(
        ["int8gate.yaml::digits", "test_inner_a.py::test_a", "2 tests collected*"]
    )
    # an explicit selection runs what was selected, not every gate of the default manifest as well
    one_file.assert_outcomes(passed=1)


def test_manifest_budgets_add_to_the_command_line_budget(project: pytest.Pytester) -> None:
    write(
        project.path / "int8gate.yaml",
        """
        models:
          - {name: digits, model: digits_cnn.onnx, calib_data: calib.npz, budget: {cosine: 0.5}}
        """,
    )

    result = project.runpytest(
        "--int8-budget", "cosine=0.9999999", "--int8-budget", "sqnr_db=10", "--int8-report-json", "r.json"
    )

    result.assert_outcomes(passed=1)
    record = gates(project.path / "r.json")["digits"]
    assert record["budget"] == {"cosine": 0.5, "sqnr_db": 10.0}
    assert any("calibration data" in note for note in record["notes"])  # no eval_data: warned in the record


def test_manifest_entry_with_the_tensorrt_backend_is_an_error(project: pytest.Pytester) -> None:
    write(
        project.path / "int8gate.yaml",
        "models:\n  - {name: trt, model: digits_cnn.onnx, calib_data: calib.npz, backend: tensorrt}\n",
    )

    result = project.runpytest()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["INT8 gate error: *tensorrt*"])

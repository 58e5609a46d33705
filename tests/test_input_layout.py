"""Constant inputs (a 0-d sample rate) and sample axes other than 0 (a recurrent state ``[2, N, 128]``),
on a model shaped like silero VAD: the data layer, every surface (options, ini, manifest, command line,
the ``int8_gate`` fixture), a benign twin that passes and a planted-outlier twin that fails, and one
sentence naming the input and the way out for each thing that does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from recurrent_models import HIDDEN, vad_data, vad_model

from pytest_int8gate.cli import main
from pytest_int8gate.data import DataError, InputLayout, load_dataset, resolve_layout, sample_count
from pytest_int8gate.graph import load_model
from pytest_int8gate.pipeline import GatePipeline, GateSpec

LAYOUT_ARGS = ("--int8-const", "sr=16000", "--int8-sample-axis", "state=1")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vad")
    vad_model(root / "vad.onnx")
    vad_model(root / "vad_outlier.onnx", outlier=True)
    vad_data(root / "calib.npz", 96, seed=1)
    vad_data(root / "eval.npz", 96, seed=2)
    return root


def _info(files: Path):  # type: ignore[no-untyped-def]
    return load_model(files / "vad.onnx").info


# ---- the data layer ----------------------------------------------------------------------------------


def test_batches_follow_each_inputs_sample_axis_across_files(files: Path, tmp_path: Path) -> None:
    """Two files of 40 and 56 samples, batches of 32: the state's samples are cut and joined on axis 1."""
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((96, 576)).astype(np.float32)
    state = rng.standard_normal((2, 96, HIDDEN)).astype(np.float32)
    (tmp_path / "parts").mkdir()
    np.savez(tmp_path / "parts" / "a.npz", input=frames[:40], state=state[:, :40])
    np.savez(tmp_path / "parts" / "b.npz", input=frames[40:], state=state[:, 40:])
    info = _info(files)
    layout = resolve_layout(info, {"sr": 16000}, {"state": 1})

    data = load_dataset(tmp_path / "parts", info, layout=layout)
    batches = list(data.batches(32))

    assert data.num_samples == 96 and data.sample_shapes["state"] == (2, HIDDEN)
    assert [sample_count(b) for b in batches] == [32, 32, 32]
    assert [b["state"].shape for b in batches] == [(2, 32, HIDDEN)] * 3
    assert all(b["sr"].shape == () and b["sr"].dtype == np.int64 and int(b["sr"]) == 16000 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["state"] for b in batches], axis=1), state)
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), frames)
    # the layout is part of what is fed: another sample rate is another fingerprint
    other = load_dataset(tmp_path / "parts", info, layout=resolve_layout(info, {"sr": 8000}, {"state": 1}))
    assert other.fingerprint != data.fingerprint
    head = data.head(20)
    assert next(head.batches(20))["state"].shape == (2, 20, HIDDEN)


def test_a_constant_state_of_one_sample_is_repeated_to_each_batch(files: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "zeros.npy", np.zeros((2, 1, HIDDEN), np.float32))
    np.savez(tmp_path / "frames.npz", input=np.ones((10, 576), np.float32))
    info = _info(files)
    layout = resolve_layout(info, {"sr": 8000, "state": str(tmp_path / "zeros.npy")}, {"state": 1})

    (batch,) = load_dataset(tmp_path / "frames.npz", info, layout=layout).batches(16)

    assert batch["state"].shape == (2, 10, HIDDEN) and int(batch["sr"]) == 8000


@pytest.mark.parametrize(
    ("arrays", "constants", "message"),
    [
        (
            {"input": np.ones((8, 576), np.float32), "state": np.ones((2, 8, HIDDEN), np.float32)},
            {},
            r"input 'sr' is a 0-d int64 the calibration data does not provide; give it with --int8-const "
            r"sr=VALUE \(manifest key const, int8gate check --const\)",
        ),
        (
            {"input": np.ones((8, 576), np.float32), "state": np.ones((2, 8, HIDDEN), np.float32)},
            {"sr": 16000},
            r"array 'state' has 2 on axis 0 but the other arrays hold 8 samples \(chunk 0\); if its samples "
            r"lie on axis 1, give --int8-sample-axis state=1",
        ),
        (
            {
                "input": np.ones((8, 576), np.float32),
                "state": np.ones((2, 8, HIDDEN), np.float32),
                "sr": np.array(16000),
            },
            {},
            r"array 'sr' is 0-d \(one value, no sample axis\); give it as a constant input instead: "
            r"--int8-const sr=VALUE",
        ),
    ],
    ids=["sr-missing", "state-axis-not-given", "sr-as-an-array"],
)
def test_data_that_does_not_fit_names_the_input_and_the_way_out(
    files: Path, tmp_path: Path, arrays: dict[str, np.ndarray], constants: dict[str, int], message: str
) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    info = _info(files)
    axes = {} if constants else {"state": 1}
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "d.npz", info, layout=resolve_layout(info, constants, axes))


def _npy(tmp_path: Path, name: str, array: np.ndarray) -> str:
    np.save(tmp_path / name, array)
    return str(tmp_path / name)


def _forged(tmp_path: Path) -> str:
    """A .npy whose header declares a 4 TiB array over a few bytes."""
    path = tmp_path / "forged.npy"
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<i8", "fortran_order": False, "shape": (2**40, 1)}
        )
        handle.write(b"\0" * 16)
    return str(path)


@pytest.mark.parametrize(
    ("constants", "axes", "message"),
    [
        ({"rate": 16000}, {}, r"constant 'rate': the model has no input of that name; its inputs are"),
        ({"sr": 0.5}, {}, r"constant 'sr': input is int64, which cannot hold 0.5"),
        ({"sr": 2**70}, {}, r"constant 'sr': input is int64, which cannot hold"),
        ({"sr": float("nan")}, {}, r"constant 'sr': holds NaN or Inf"),
        ({"sr": "rate.txt"}, {}, r"constant 'sr': 'rate.txt' is not a .npy file"),
        ({"sr": "missing.npy"}, {}, r"constant 'sr': missing.npy not found"),
        ({"sr": [16000, 8000]}, {}, r"constant 'sr': has shape \[2\] but input 'sr' is \[\]; give a number"),
        ({"sr": "FLOAT"}, {}, r"constant 'sr': .*float32 but input 'sr' is int64; convert it"),
        ({"sr": "FORGED"}, {}, r"forged.npy: the array declares shape \[1099511627776, 1\]"),
        ({"state": "WIDE"}, {"state": 1}, r"constant 'state': holds 3 on its sample axis 1; a constant"),
        ({}, {"hidden": 1}, r"sample axis 'hidden': the model has no input or output of that name"),
        ({}, {"state": 3}, r"sample axis state=3: 'state' has shape \[2, batch, 128\], which has no axis 3"),
        (
            {"sr": 16000, "input": "FRAME", "state": "STATE"},
            {"state": 1},
            r"every model input \(input, sr, state\) is given as a constant",
        ),
    ],
)
def test_hostile_constants_and_axes_are_one_sentence_naming_the_key(
    files: Path, tmp_path: Path, constants: dict[str, object], axes: dict[str, int], message: str
) -> None:
    stand_ins = {
        "FLOAT": lambda: _npy(tmp_path, "f.npy", np.array(16000.0, np.float32)),
        "FORGED": lambda: _forged(tmp_path),
        "WIDE": lambda: _npy(tmp_path, "w.npy", np.zeros((2, 3, HIDDEN), np.float32)),
        "FRAME": lambda: _npy(tmp_path, "i.npy", np.zeros((1, 576), np.float32)),
        "STATE": lambda: _npy(tmp_path, "s.npy", np.zeros((2, 1, HIDDEN), np.float32)),
    }
    given = {k: stand_ins[v]() if isinstance(v, str) and v in stand_ins else v for k, v in constants.items()}
    with pytest.raises(DataError, match=message) as caught:
        resolve_layout(_info(files), given, axes)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_an_output_whose_samples_are_elsewhere_names_the_axis_to_give(files: Path) -> None:
    layout = InputLayout(constants={"sr": np.array(16000)}, sample_axes={})
    with pytest.raises(
        DataError, match=r"output 'stateN' has shape \[2, 8, 128\].*--int8-sample-axis stateN=1"
    ):
        layout.output("stateN", np.zeros((2, 8, HIDDEN), np.float32), 8, "FP32")
    # declared shapes that name the batch dimension say it without being told
    assert resolve_layout(_info(files), {"sr": 16000}, {"state": 1}).axis("stateN") == 1


# ---- a gate end to end: library, command line, manifest, --int8-model, the fixture -----------------


def test_the_benign_model_passes_and_the_planted_outlier_fails(files: Path) -> None:
    verdicts = {}
    for name in ("vad.onnx", "vad_outlier.onnx"):
        spec = GateSpec(
            model=files / name,
            calib_data=str(files / "calib.npz"),
            eval_data=str(files / "eval.npz"),
            constants={"sr": 16000},
            sample_axes={"state": 1},
            bisect=False,
        )
        with GatePipeline(spec) as pipeline:
            verdicts[name] = pipeline.run()
    assert verdicts["vad.onnx"].passed and not verdicts["vad_outlier.onnx"].passed
    assert verdicts["vad.onnx"].eval_samples == 96
    # the state is compared sample by sample (its samples on axis 1), and fails with the rest
    assert any(r.output == "stateN" and not r.passed for r in verdicts["vad_outlier.onnx"].results)


def test_its_calibration_table_is_the_same_whatever_the_inferences_side_by_side(files: Path) -> None:
    """A constant and a state with its samples on axis 1 make each batch one step (run whole): spread over
    1, 3 or 4 inferences side by side, the steps give the same table."""
    documents = []
    for threads in (1, 3, 4):
        spec = GateSpec(
            model=files / "vad.onnx",
            calib_data=str(files / "calib.npz"),
            eval_data=str(files / "eval.npz"),
            constants={"sr": 16000},
            sample_axes={"state": 1},
            bisect=False,
            threads=threads,
        )
        with GatePipeline(spec) as pipeline:
            documents.append(pipeline.table.to_json())
    assert documents[0] == documents[1] == documents[2]


def test_the_command_line_gates_it(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["check", "--calib-data", str(files / "calib.npz"), "--eval-data", str(files / "eval.npz")]
    layout = ["--const", "sr=16000", "--sample-axis", "state=1", "--no-bisect"]

    assert main([*base[:1], str(files / "vad.onnx"), *base[1:], *layout]) == 0
    assert main([*base[:1], str(files / "vad_outlier.onnx"), *base[1:], *layout]) == 1
    capsys.readouterr()
    assert main([*base[:1], str(files / "vad.onnx"), *base[1:], "--sample-axis", "state=1"]) == 2
    err = capsys.readouterr().err
    assert "input 'sr' is a 0-d int64 the calibration data does not provide; give it with --int8-const" in err
    assert len(err.strip().splitlines()) == 1
    assert main([*base[:1], str(files / "vad.onnx"), *base[1:], "--const", "sr=fast"]) == 2
    assert "--const: 'sr=fast': the value is neither a number nor a .npy file." in capsys.readouterr().err
    table = files / "table.json"
    calibrate = [
        "calibrate",
        str(files / "vad.onnx"),
        "--data",
        str(files / "calib.npz"),
        "--out",
        str(table),
    ]
    assert main([*calibrate, "--const", "sr=16000", "--sample-axis", "state=1"]) == 0
    assert "on 96 samples" in capsys.readouterr().out


MANIFEST = """
models:
  - name: vad
    model: vad.onnx
    calib_data: calib.npz
    eval_data: eval.npz
    const: {sr: 16000}
    sample_axis: {state: 1}
  - name: vad_outlier
    model: vad_outlier.onnx
    calib_data: calib.npz
    eval_data: eval.npz
    const: {sr: rate.npy}
    sample_axis: {state: 1}
    bisect: false
"""


def _copy_files(files: Path, root: Path) -> None:
    for name in ("vad.onnx", "vad_outlier.onnx", "calib.npz", "eval.npz"):
        (root / name).write_bytes((files / name).read_bytes())
    np.save(root / "rate.npy", np.array(16000, np.int64))


def test_the_manifest_gates_it(files: Path, empty_project: pytest.Pytester) -> None:
    _copy_files(files, empty_project.path)
    (empty_project.path / "int8gate.yaml").write_text(MANIFEST)

    result = empty_project.runpytest("--int8-bisect-max-evals", "4", "--int8-report-json", "r.json")

    result.assert_outcomes(passed=1, failed=1)
    gates = {g["name"]: g for g in json.loads((empty_project.path / "r.json").read_text())["gates"]}
    assert (gates["vad"]["verdict"], gates["vad_outlier"]["verdict"]) == ("pass", "fail")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "const: {sr: .nan}",
            "entry 1 (vad): const['sr'] must be a number, a list of numbers or a .npy path",
        ),
        ("const: {rate: 16000}", "constant 'rate': the model has no input of that name"),
        ("sample_axis: {state: -1}", "entry 1 (vad): sample_axis['state'] must be a sample axis"),
        ("const: {sr: rate.txt}", "entry 1 (vad): const['sr'] must be a number, a list of numbers or a .npy"),
    ],
)
def test_a_bad_manifest_value_is_one_sentence_naming_the_key(
    files: Path, empty_project: pytest.Pytester, entry: str, message: str
) -> None:
    _copy_files(files, empty_project.path)
    (empty_project.path / "int8gate.yaml").write_text(
        f"models:\n  - {{name: vad, model: vad.onnx, calib_data: calib.npz, {entry}}}\n"
    )
    result = empty_project.runpytest()
    assert result.ret != 0
    assert message in result.stdout.str() and "Traceback" not in result.stdout.str()


def test_the_zero_code_path_gates_it(files: Path, empty_project: pytest.Pytester) -> None:
    _copy_files(files, empty_project.path)
    data = ("--int8-calib-data", "calib.npz", "--int8-eval-data", "eval.npz")

    passed = empty_project.runpytest("--int8-model", "vad.onnx", *data, *LAYOUT_ARGS)
    passed.assert_outcomes(passed=1)
    failed = empty_project.runpytest(
        "--int8-model", "vad_outlier.onnx", *data, *LAYOUT_ARGS, "--int8-no-bisect"
    )
    failed.assert_outcomes(failed=1)
    missing = empty_project.runpytest("--int8-model", "vad.onnx", *data, "--int8-sample-axis", "state=1")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*input 'sr' is a 0-d int64 the calibration data does not provide*"])
    bad = empty_project.runpytest("--int8-model", "vad.onnx", *data, "--int8-const", "sr")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--int8-const: *'sr' is not NAME=VALUE*"])


def test_the_ini_file_and_the_fixture_take_them(files: Path, empty_project: pytest.Pytester) -> None:
    _copy_files(files, empty_project.path)
    (empty_project.path / "pytest.ini").write_text("[pytest]\nint8_const =\n    sr=rate.npy\n")
    empty_project.makeconftest(
        """
import pytest

@pytest.fixture(scope="session")
def int8_model():
    return "vad.onnx"

@pytest.fixture(scope="session")
def int8_calibration_data():
    return "calib.npz"

@pytest.fixture(scope="session")
def int8_sample_axes():
    return {"state": 1}
"""
    )
    empty_project.makepyfile(
        test_vad="""
def test_vad(int8_gate):
    assert int8_gate.check().passed

def test_vad_8k(int8_gate):
    assert int8_gate.check(constants={"sr": 8000}).passed
"""
    )
    empty_project.runpytest().assert_outcomes(passed=2)


# ---- the README's section runs as written --------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### Inputs that are not samples on axis 0")
    return text[start : text.index("\n### ", start + 1)]


def test_the_readmes_commands_and_manifest_run_as_written(
    files: Path, empty_project: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    section = _readme_section()
    bash = section.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    manifest = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    root = empty_project.path
    (root / "vad.onnx").write_bytes((files / "vad.onnx").read_bytes())
    (root / "calib.npz").write_bytes((files / "calib.npz").read_bytes())

    pytest_line, check_line = (line.split() for line in bash)
    assert pytest_line[0] == "pytest" and check_line[0] == "int8gate"
    empty_project.runpytest(*pytest_line[1:]).assert_outcomes(passed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(check_line[1:]) == 0, capsys.readouterr().err
    (root / "int8gate.yaml").write_text(manifest)
    empty_project.runpytest().assert_outcomes(passed=1)

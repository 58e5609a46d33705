"""The ``int8gate`` command line, run in-process with ``main([...])`` and once as ``python -m``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from example_files import CALIB, DIGITS, EVAL, LABELS, OUTLIER
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate import __version__, calibrate
from pytest_int8gate.calibrate import INT8_MAX, CalibrationTable, read_trt_cache
from pytest_int8gate.cli import main, parse_overrides
from pytest_int8gate.data import load_dataset, read_once
from pytest_int8gate.errors import Int8GateError
from pytest_int8gate.graph import load_model

ROOT = Path(__file__).resolve().parents[1]
# The outlier model gated with the calibrator that ruins it (top-1 10 %) on a one-point top-1 budget.
CHECK_OUTLIER_WITH_MAX = [
    "check", str(OUTLIER), "--calib-data", str(CALIB), "--eval-data", str(EVAL), "--labels", str(LABELS),
    "--calibrator", "max", "--budget", "top1_drop=0.01",
]  # fmt: skip


def _mlp(path: Path, seed: int) -> Path:
    """x[N,4] -> MatMul mm1 -> Relu -> MatMul mm2 -> y[N,2]; the seed only changes the weights."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(4, 3)).astype(np.float32)
    w2 = rng.normal(size=(3, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def mlp(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """The tiny model, its calibration .npz and the calibration array."""
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    data = tmp_path / "calib.npz"
    np.savez(data, x=x)
    return _mlp(tmp_path / "mlp.onnx", seed=1), data, x


def _calibrate(model: Path, data: Path | str, table: Path, *extra: str) -> int:
    return main(["calibrate", str(model), "--data", str(data), "--out", str(table), *extra])


@pytest.fixture
def calibrated_mlp(
    tmp_path: Path, mlp: tuple[Path, Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> tuple[Path, Path]:
    """The tiny model and the calibration table ``int8gate calibrate`` wrote for it (its output dropped)."""
    model, data, _ = mlp
    table = tmp_path / "t.json"
    assert _calibrate(model, data, table) == 0
    capsys.readouterr()
    return model, table


def _error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("int8gate: error: ")
    return lines[0]


def test_calibrate_writes_table_and_trt_cache(
    tmp_path: Path, mlp: tuple[Path, Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data, x = mlp
    table_path, cache_path = tmp_path / "out" / "table.json", tmp_path / "calib.cache"
    assert _calibrate(model, data, table_path, "--method", "max", "--trt-cache", str(cache_path)) == 0
    out = capsys.readouterr().out
    assert "2 activation tensor(s) of mlp.onnx on 40 samples (batch 32)" in out
    for line in ("fp32 pass", "statistics", "total"):
        assert line in out

    table = CalibrationTable.load(table_path, model_hash=load_model(model).info.model_hash)
    assert table.num_samples == 40
    assert set(table.amax) == {"x", "r"}
    assert table.amax["x"]["max"] == float(np.abs(x).max())
    assert f"  x  {float(np.abs(x).max()):.6g}" in out

    text = cache_path.read_text()
    assert text.startswith("TRT-101300-EntropyCalibration2\n")
    cache = read_trt_cache(text)
    assert cache.scales["x"] == pytest.approx(float(np.abs(x).max()) / INT8_MAX, rel=1e-6)


def test_calibrate_trt_version_and_method_choose_header_and_scales(
    tmp_path: Path, mlp: tuple[Path, Path, np.ndarray]
) -> None:
    model, data, _ = mlp
    cache_path = tmp_path / "c.cache"
    args = ["--method", "percentile", "--percentile", "90", "--trt-cache", str(cache_path)]
    assert _calibrate(model, data, tmp_path / "t.json", *args, "--trt-version", "8.6.1") == 0
    cache = read_trt_cache(cache_path.read_text())
    assert cache.header == "TRT-8601-EntropyCalibration2"
    table = CalibrationTable.load(tmp_path / "t.json")
    assert table.settings.percentile == 90
    assert cache.amax()["x"] == pytest.approx(table.amax["x"]["percentile"], rel=1e-6)
    assert table.amax["x"]["percentile"] < table.amax["x"]["max"]


def test_calibrate_bad_percentile_and_trt_version_exit_2_before_work(
    tmp_path: Path, mlp: tuple[Path, Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data, _ = mlp
    assert _calibrate(model, data, tmp_path / "t.json", "--percentile", "120") == 2
    assert "--percentile: must be in (0, 100], got '120'" in capsys.readouterr().err
    assert _calibrate(model, data, tmp_path / "t.json", "--trt-version", "ten") == 2
    assert "'ten'" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "t.json").exists()


def test_calibrate_and_quantize_the_example_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table, qdq = tmp_path / "digits.json", tmp_path / "digits.int8.onnx"
    assert _calibrate(DIGITS, CALIB, table) == 0
    assert "5 activation tensor(s) of digits_cnn.onnx on 600 samples" in capsys.readouterr().out

    assert main(["quantize", str(DIGITS), "--table", str(table), "--out", str(qdq)]) == 0
    out = capsys.readouterr().out
    assert "quantized 5 of 5 layer(s) of digits_cnn.onnx with the entropy calibrator" in out
    assert "kept in float" not in out

    model = onnx.load(str(qdq))
    assert sum(node.op_type == "QuantizeLinear" for node in model.graph.node) == 5
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    with np.load(EVAL) as archive:
        images = archive["input"]
    logits = session.run(None, {"input": images})[0]
    accuracy = float(np.mean(np.argmax(logits, axis=1) == np.load(LABELS)))
    assert accuracy >= 0.95  # FP32 is 0.974


def test_quantize_exclude_and_override(
    tmp_path: Path, calibrated_mlp: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, table = calibrated_mlp
    qdq = tmp_path / "q.onnx"
    argv = ["quantize", str(model), "--table", str(table), "--exclude", "mm2"]
    assert main([*argv, "--override", "mm1=max", "--out", str(qdq)]) == 0
    out = capsys.readouterr().out
    assert "quantized 1 of 2 layer(s) of mlp.onnx with the entropy calibrator, mm1 with max" in out
    assert "mm2  excluded by the plan" in out

    graph = onnx.load(str(qdq)).graph
    nodes = {node.name: node for node in graph.node}
    assert nodes["mm2"].input[0] == "r"  # kept in float
    quantize = [node for node in graph.node if node.op_type == "QuantizeLinear"]
    assert [node.input[0] for node in quantize] == ["x"]
    scale = {init.name: numpy_helper.to_array(init) for init in graph.initializer}[quantize[0].input[1]]
    max_amax = CalibrationTable.load(table).amax["x"]["max"]
    assert float(scale) == pytest.approx(max_amax / INT8_MAX, rel=1e-6)


def test_quantize_misspelt_exclude_exits_2_naming_the_node(
    tmp_path: Path, calibrated_mlp: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, table = calibrated_mlp
    qdq = tmp_path / "q.onnx"
    assert main(["quantize", str(model), "--table", str(table), "--exclude", "mm_2", "--out", str(qdq)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "'mm_2'" in line
    assert "did you mean 'mm2'" in line
    assert not qdq.exists()


def test_quantize_bad_override_exits_2(
    tmp_path: Path, calibrated_mlp: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, table = calibrated_mlp
    base = ["quantize", str(model), "--table", str(table), "--out", str(tmp_path / "q.onnx")]
    assert main([*base, "--override", "mm1=kl"]) == 2
    assert "'kl'" in _error_line(capsys.readouterr().err)
    assert main([*base, "--override", "mm1"]) == 2
    assert "NODE=CALIBRATOR" in _error_line(capsys.readouterr().err)


def test_stale_table_exits_2_unless_allowed(
    tmp_path: Path, calibrated_mlp: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, table = calibrated_mlp
    other = _mlp(tmp_path / "other.onnx", seed=2)  # same graph, other weights
    qdq = tmp_path / "q.onnx"
    argv = ["quantize", str(other), "--table", str(table), "--out", str(qdq)]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert "stale calibration table" in line
    assert "the model changed" in line
    assert not qdq.exists()

    assert main([*argv, "--allow-stale"]) == 0
    captured = capsys.readouterr()
    assert "int8gate: warning:" in captured.err
    assert "another model" in captured.err
    assert qdq.exists()


def test_calibrate_reads_module_function_data_from_the_working_directory(
    tmp_path: Path,
    mlp: tuple[Path, Path, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, _, _ = mlp
    module = "cli_test_feeds"
    (tmp_path / f"{module}.py").write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    for seed in range(3):\n"
        "        yield {'x': np.random.default_rng(seed).normal(size=(7, 4)).astype(np.float32)}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader adds the working directory
    try:
        assert _calibrate(model, f"{module}:batches", tmp_path / "t.json") == 0
    finally:
        sys.modules.pop(module, None)
    assert "on 21 samples" in capsys.readouterr().out


def test_missing_model_and_data_exit_2(
    tmp_path: Path, mlp: tuple[Path, Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    model, _, _ = mlp
    assert _calibrate(tmp_path / "nope.onnx", CALIB, tmp_path / "t.json") == 2
    assert "nope.onnx" in _error_line(capsys.readouterr().err)
    assert _calibrate(model, CALIB, tmp_path / "t.json") == 2  # the digits data does not fit the MLP
    assert "'input'" in _error_line(capsys.readouterr().err)


def test_check_passes_on_the_example_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "verdict.json"
    argv = ["check", str(DIGITS), "--calib-data", str(CALIB), "--eval-data", str(EVAL)]
    assert main([*argv, "--labels", str(LABELS), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("INT8 gate passed: digits_cnn.onnx  [onnxruntime ")
    assert "calibration 600, evaluation 500 samples" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["top1_drop"][-1] == "PASS"
    assert rows["cosine"][-1] == "PASS"

    verdict = json.loads(report.read_text())
    assert verdict["verdict"] == "pass"
    assert verdict["layers"] == {"quantized": 5, "quantizable": 5}
    # no budget given: the defaults for labelled class scores
    assert verdict["budget"] == {"top1_drop": 0.01, "top1_agreement": 0.95, "cosine": 0.98}
    assert verdict["metrics"]["top1_drop"]["fp32"] == pytest.approx(0.974)
    assert verdict["metrics"]["cosine"]["int8"] >= 0.98
    assert verdict["bisection"] is None


def test_check_fails_on_the_outlier_model_and_names_the_offender(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "verdict.json"
    assert main([*CHECK_OUTLIER_WITH_MAX, "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INT8 gate failed: digits_cnn_outlier.onnx")
    table_row = next(line for line in out.splitlines() if line.strip().startswith("top1_drop"))
    assert table_row.split()[-1] == "FAIL"
    assert "Offending layers" in out
    assert "/conv2/Conv" in out
    # another calibrator (for the model, or for /conv2/Conv) meets the budget on the 200-sample search
    # subset but not on the 300 samples the search never used: the verification rejects both, and only
    # keeping the layer in float is offered
    lines = out.splitlines()
    assert (
        "Note: calibrator entropy for the whole model met the budget on the 200 search samples but not on "
        "the 300 samples the search never used" in lines
    )
    assert (
        "Note: the repair of /conv2/Conv met the budget on the 200 search samples but not on the 300 samples "
        "the search never used; kept in float instead" in lines
    )
    assert (
        "Verified fix on all 500 evaluation samples and on the 300 the search never used: "
        "exclude [/conv2/Conv] -> top1_drop 0.0000  PASS"
    ) in (
        out.splitlines()
    )

    verdict = json.loads(report.read_text())
    assert verdict["verdict"] == "fail"
    assert verdict["metrics"]["top1_drop"]["int8"] < 0.5  # max calibration ruins the outlier model
    offenders = verdict["bisection"]["offending_layers"]
    assert [o["name"] for o in offenders] == ["/conv2/Conv"]
    assert offenders[0]["action"] == "float"
    assert verdict["bisection"]["fix"]["exclude"] == ["/conv2/Conv"]
    assert verdict["bisection"]["fix"]["calibrator_overrides"] == {}


def test_check_without_bisection_and_with_exclusion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "verdict.json"
    assert main([*CHECK_OUTLIER_WITH_MAX, "--no-bisect", "--json", str(report)]) == 1
    assert "Offending layers (" not in capsys.readouterr().out
    assert json.loads(report.read_text())["bisection"] is None
    assert main([*CHECK_OUTLIER_WITH_MAX, "--exclude", "/conv2/Conv", "--json", str(report)]) == 0
    assert capsys.readouterr().out.startswith("INT8 gate passed: digits_cnn_outlier.onnx")
    verdict = json.loads(report.read_text())
    assert verdict["layers"] == {"quantized": 4, "quantizable": 5}
    assert verdict["plan"]["exclude"] == ["/conv2/Conv"]


def test_check_bad_budget_key_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", str(DIGITS), "--calib-data", str(CALIB), "--budget", "top1=0.01"]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert "'top1'" in line
    assert "top1_drop" in line  # the valid keys are listed


def test_usage_errors_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"int8gate {__version__}"
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
    assert main(["calibrate", str(DIGITS), "--data", str(CALIB), "--out", "t.json", "--batch-size", "0"]) == 2
    assert "--batch-size: must be at least 1" in capsys.readouterr().err


def test_parse_overrides() -> None:
    assert parse_overrides(["/a/Conv=max", "b=c=percentile"]) == {"/a/Conv": "max", "b=c": "percentile"}
    with pytest.raises(Int8GateError, match="NODE=CALIBRATOR"):
        parse_overrides(["=max"])


def test_module_entry_point_runs_as_a_process(tmp_path: Path, mlp: tuple[Path, Path, np.ndarray]) -> None:
    model, data, _ = mlp
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest_int8gate.cli"]
    table = tmp_path / "t.json"
    done = subprocess.run(
        [*command, "calibrate", str(model), "--data", str(data), "--out", str(table)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "on 40 samples" in done.stdout
    assert CalibrationTable.load(table).num_samples == 40

    failed = subprocess.run(
        [*command, "quantize", str(model), "--table", str(table), "--exclude", "nope", "--out", "q.onnx"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("int8gate: error: ")
    assert "'nope'" in failed.stderr


def test_calibrate_piped_into_a_reader_that_leaves_still_writes_the_table(tmp_path: Path) -> None:
    """`int8gate calibrate ... | head -1`: the table is written before the report is printed, and the closed
    pipe ends the command quietly (no 'internal error', no second report at exit)."""
    table = tmp_path / "t.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_int8gate.cli",
            "calibrate",
            str(DIGITS),
            "--data",
            str(CALIB),
            "--out",
            str(table),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader leaves before the first line
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 2
    assert stderr == ""
    assert CalibrationTable.load(table).amax


# ---- int8gate calibrate reads its data once: checked and fingerprinted as the pass reads it --------------


def _npy_folder(folder: Path, *parts: np.ndarray) -> Path:
    """A folder of .npy files, read one file (one chunk) at a time, in name order."""
    folder.mkdir()
    for index, part in enumerate(parts):
        np.save(folder / f"{index:02d}.npy", part)
    return folder


def test_calibrate_fingerprints_its_data_in_the_one_pass_it_reads(
    tmp_path: Path, mlp: tuple[Path, Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    """The table's fingerprint and sample count are those of a separate scan of the same data (one .npz, or a
    folder of chunks), and a changed sample changes the fingerprint."""
    model, data, x = mlp
    folder = _npy_folder(tmp_path / "chunks", x[:15], x[15:16], x[16:])
    info = load_model(model).info
    fingerprints = set()
    for source in (data, folder):
        expected = load_dataset(str(source), info, role="calibration")
        table_path = tmp_path / f"{source.name}.json"
        assert _calibrate(model, source, table_path) == 0
        table = CalibrationTable.load(table_path)
        assert table.data_fingerprint == expected.fingerprint
        assert table.num_samples == expected.num_samples == 40
        fingerprints.add(table.data_fingerprint)
    changed = x.copy()
    changed[39, 0] += 1.0
    np.save(folder / "02.npy", changed[16:])
    assert _calibrate(model, folder, tmp_path / "changed.json") == 0
    assert CalibrationTable.load(tmp_path / "changed.json").data_fingerprint not in fingerprints
    capsys.readouterr()


@pytest.mark.parametrize("where", ["first chunk", "last chunk"])
def test_calibrate_refuses_a_non_finite_sample_wherever_it_is_and_writes_no_table(
    tmp_path: Path, mlp: tuple[Path, Path, np.ndarray], capsys: pytest.CaptureFixture[str], where: str
) -> None:
    model, _, x = mlp
    bad = x.copy()
    bad[0 if where == "first chunk" else -1, 2] = np.nan
    folder = _npy_folder(tmp_path / "chunks", bad[:20], bad[20:])
    table = tmp_path / "t.json"
    assert _calibrate(model, folder, table) == 2
    line = _error_line(capsys.readouterr().err)
    sample = "sample 0" if where == "first chunk" else "sample 39"
    assert "holds NaN or Inf" in line and sample in line
    assert not table.exists()
    # its benign twin calibrates
    assert _calibrate(model, _npy_folder(tmp_path / "good", x[:20], x[20:]), table) == 0


def test_calibrate_refuses_data_of_the_wrong_shape_before_running_the_model(
    tmp_path: Path, mlp: tuple[Path, Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    model, _, _ = mlp
    data = tmp_path / "wide.npy"
    np.save(data, np.zeros((8, 5), np.float32))  # the model takes [N, 4]
    assert _calibrate(model, data, tmp_path / "t.json") == 2
    line = _error_line(capsys.readouterr().err)
    assert "wide.npy" in line and "'x'" in line and "ONNX Runtime" not in line


def test_a_fixed_batch_model_still_refuses_a_partial_batch_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = np.random.default_rng(3).normal(size=(4, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 2])],
        [numpy_helper.from_array(w, "w")],
    )
    model = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(4).normal(size=(20, 4)).astype(np.float32))
    table = tmp_path / "t.json"
    assert _calibrate(model, data, table) == 2
    line = _error_line(capsys.readouterr().err)
    assert "do not fill whole batches of 8" in line and not table.exists()
    np.save(data, np.random.default_rng(4).normal(size=(16, 4)).astype(np.float32))
    assert _calibrate(model, data, table) == 0


def test_a_one_pass_read_has_no_summary_before_its_end(mlp: tuple[Path, Path, np.ndarray]) -> None:
    model, data, _ = mlp
    read = read_once(str(data), load_model(model).info)
    with pytest.raises(Int8GateError, match="not read to the end"):
        _ = read.dataset
    batches = list(read.batches(16))
    assert [len(b["x"]) for b in batches] == [16, 16, 8]
    assert read.dataset.num_samples == 40


def test_calibrate_writes_the_same_table_whatever_the_inferences_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--threads 1 runs the pass as one inference; 3 and 4 spread its steps over as many inferences side by
    side, each with statistics of its own: the tables (every calibrator's amax) are the same bytes."""
    tables = []
    for threads in (1, 3, 4):
        table = tmp_path / f"t{threads}.json"
        assert _calibrate(DIGITS, CALIB, table, "--threads", str(threads)) == 0
        out = capsys.readouterr().out
        assert (f"summed over {threads} inferences side by side" in out) is (threads > 1)
        assert f"{calibrate.HISTOGRAM_KERNEL} histograms)" in out  # which binning ran, as README says
        tables.append(table.read_bytes())
    assert tables[0] == tables[1] == tables[2]


def test_calibrate_interrupted_mid_pass_stops_at_once_and_writes_no_table(
    tmp_path: Path, mlp: tuple[Path, Path, np.ndarray]
) -> None:
    """Ctrl-C while the side-by-side pass has steps on its workers: one line, exit 130, no table and no
    traceback. The loader interrupts its own process part-way through the data."""
    model, _, _ = mlp
    (tmp_path / "interrupting.py").write_text(
        "import os, signal\n"
        "import numpy as np\n"
        "def batches():\n"
        "    for seed in range(400):\n"
        "        if seed == 20:\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        yield {'x': np.random.default_rng(seed).normal(size=(64, 4)).astype(np.float32)}\n"
    )
    table = tmp_path / "t.json"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-m", "pytest_int8gate.cli", "calibrate", str(model), "--data",
         "interrupting:batches", "--out", str(table), "--threads", "4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        # Python turns SIGINT into KeyboardInterrupt only where it is not ignored (a background job's is)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (130, "int8gate: interrupted\n")
    assert not table.exists()


def test_calibrate_loads_no_repair_equalization_or_smoothquant_code(tmp_path: Path) -> None:
    """`int8gate calibrate` is the command a speed-minded user runs most: the repair rungs stay unloaded."""
    argv = ["calibrate", str(DIGITS), "--data", str(CALIB), "--out", str(tmp_path / "t.json")]
    script = (
        "import sys\n"
        "from pytest_int8gate.cli import main\n"
        f"assert main({argv!r}) == 0\n"
        "heavy = ('equalize', 'smoothquant', 'repair', 'bias_correction', 'search', 'pipeline')\n"
        "print(sorted(name for name in heavy if f'pytest_int8gate.{name}' in sys.modules))\n"
    )
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-600:]
    assert done.stdout.splitlines()[-1] == "[]"

"""Hostile inputs — what a new user gets wrong and what an attacker would try — each end in one sentence
that names the file, tensor, key or setting: no traceback, no hang, no unbounded memory, never a pass.

Each broken case has a benign twin that must pass the same way. Where a gate runs, the case is an ERROR in
the JSON and the Markdown report; through ``int8gate`` it exits 2. Cases that could hang or blow memory up
run in a child process under a wall-time limit and an address-space limit.

Set ``INT8GATE_RELIABILITY_LOG=<file>`` to append every observed message as a JSON line (the source of the
messages quoted in docs/reliability.md).
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate import cli, graph
from pytest_int8gate.backends.onnxruntime import newest_cpu_kernel
from pytest_int8gate.budget import Budget
from pytest_int8gate.cache import ArtifactCache
from pytest_int8gate.data import Dataset, load_dataset
from pytest_int8gate.errors import (
    CacheError,
    CalibrationError,
    DataError,
    Int8GateError,
    ModelError,
    bounded_repr,
)
from pytest_int8gate.graph import graph_cycle, load_model
from pytest_int8gate.manifest import ManifestError, load_manifest
from pytest_int8gate.pipeline import GatePipeline, GateSpec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: A child process gets this much address space: ONNX Runtime and numpy load in well under it, a 4 TiB
#: allocation (or a billion-item message) cannot.
CHILD_MEMORY = 3 * 2**30
#: Wall-time limit of a child process: generous for a loaded CI machine, far below "forever".
CHILD_SECONDS = 120

LOADERS = """
import sys
import threading
import time

import numpy as np


def good():
    rng = np.random.default_rng(0)
    for _ in range(4):
        yield {"x": rng.normal(size=(16, 4)).astype(np.float32)}


def forever():
    rng = np.random.default_rng(0)
    while True:
        yield {"x": rng.normal(size=(64, 4)).astype(np.float32)}


def blocks():
    yield {"x": np.zeros((8, 4), np.float32)}
    threading.Event().wait()  # never set: blocks without using the CPU


def spins():
    while True:
        pass


def exits():
    sys.exit(3)


def exits_midway():
    yield {"x": np.zeros((8, 4), np.float32)}
    sys.exit("bye")


def interrupts():
    yield {"x": np.zeros((8, 4), np.float32)}
    raise KeyboardInterrupt
"""

EXITING_MODULE = "import sys\n\nsys.exit(4)\n\n\ndef load():\n    return {}\n"


# ---- the files -----------------------------------------------------------------------------------------


def chain(
    path: Path,
    *,
    nodes: list[onnx.NodeProto] | None = None,
    initializers: list[onnx.TensorProto] | None = None,
    x_shape: list[int | str] | None = None,
    y_shape: list[int | str] | None = None,
    opset: int = 17,
) -> None:
    """x [N, 4] -> MatMul W [4, 3] -> y [N, 3] (or the given nodes), saved at ``path``."""
    weight = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    graph_proto = helper.make_graph(
        nodes or [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape or ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3] if y_shape is None else y_shape)],
        [numpy_helper.from_array(weight, "W")] if initializers is None else initializers,
    )
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", opset)])
    path.write_bytes(model.SerializeToString())


def external_weight(location: str) -> onnx.TensorProto:
    tensor = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "48")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def forged_npy_bytes(shape: tuple[int, ...], payload: int = 4096) -> bytes:
    """A .npy whose header declares ``shape`` of float32 but which holds only ``payload`` bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * payload


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


TIB_SHAPE = (3 * 2**40 // 16, 4)  # 3 TiB of float32


def build_project(root: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    chain(root / "good.onnx")
    np.savez(root / "x.npz", x=x)
    np.save(root / "x.npy", x)
    (root / "loaders.py").write_text(LOADERS)
    (root / "exiting_module.py").write_text(EXITING_MODULE)
    # forged sizes: 3 TiB declared, 4 kB present
    (root / "forged.npy").write_bytes(forged_npy_bytes(TIB_SHAPE))
    with zipfile.ZipFile(root / "forged.npz", "w") as archive:
        archive.writestr("x.npy", forged_npy_bytes(TIB_SHAPE))
    (root / "long_header.npy").write_bytes(
        b"\x93NUMPY\x01\x00" + (60_000).to_bytes(2, "little") + b"{" + b" " * 59_998 + b"\n"
    )
    with zipfile.ZipFile(root / "no_suffix.npz", "w") as archive:
        archive.writestr("x", npy_bytes(x))
    with zipfile.ZipFile(root / "suffix.npz", "w") as archive:  # the twin: written by hand, with .npy
        archive.writestr("x.npy", npy_bytes(x))
    # external data: a NUL byte, 5,000 characters, and the twin: a real file beside the model
    np.ones((4, 3), np.float32).tofile(root / "weights.bin")
    chain(root / "external_nul.onnx", initializers=[external_weight("weights\0.bin")])
    chain(root / "external_long.onnx", initializers=[external_weight("w" * 5000 + ".bin")])
    chain(root / "external_ok.onnx", initializers=[external_weight("weights.bin")])
    # a cycle: add -> relu -> add
    chain(
        root / "cycle.onnx",
        nodes=[
            helper.make_node("MatMul", ["x", "W"], ["a"], name="matmul"),
            helper.make_node("Add", ["a", "b"], ["y"], name="add_back"),
            helper.make_node("Relu", ["y"], ["b"], name="relu_loop"),
        ],
    )
    # a fixed batch axis of 4: 10 samples do not fill whole batches, 8 do
    chain(root / "batch4.onnx", x_shape=[4, 4], y_shape=[4, 3])
    np.savez(root / "x10.npz", x=x[:10])
    np.savez(root / "x8.npz", x=x[:8])
    # a scalar output, and its twin that keeps the batch axis
    chain(
        root / "scalar.onnx",
        nodes=[
            helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
            helper.make_node("ReduceSum", ["h"], ["y"], name="total", keepdims=0),
        ],
        y_shape=[],
    )
    chain(
        root / "per_sample_sum.onnx",
        nodes=[
            helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
            helper.make_node("ReduceSum", ["h", "axes"], ["y"], name="total", keepdims=1),
        ],
        initializers=[
            numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
        y_shape=["N", 1],
    )


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project's files in a temporary folder; its loader modules are imported afresh from there."""
    build_project(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for module in ("loaders", "closing", "exiting_module"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return tmp_path


@pytest.fixture
def project(empty_project: pytest.Pytester) -> pytest.Pytester:
    build_project(empty_project.path)
    return empty_project


def log_message(entry_point: str, case: str, message: str) -> None:
    log = os.environ.get("INT8GATE_RELIABILITY_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"entry_point": entry_point, "case": case, "message": message}) + "\n")


def one_sentence(message: str) -> str:
    assert message and "\n" not in message and "Traceback" not in message, message
    assert len(message) < 1000, message
    return message


# ---- through pytest: every gate case is an ERROR in the JSON and the Markdown report -------------------

#: name -> (model, calibration data, fragment of the message); each run as a manifest entry.
GATE_CASES: dict[str, tuple[str, str, str]] = {
    "loader_never_ends": (
        "good.onnx",
        "loaders:forever",
        "holds more than 100000 samples, the cap set by the max_samples setting (--int8-max-samples)",
    ),
    "loader_that_blocks": (
        "good.onnx",
        "loaders:blocks",
        "loaders:blocks: the data loader yielded no item for 1.5 s (waiting for item 1), the limit set by "
        "the data_timeout setting (--int8-data-timeout); it was abandoned.",
    ),
    "loader_over_max_samples": (
        "good.onnx",
        "loaders:good",
        "loaders:good: the calibration data holds more than 48 samples, the cap set by the max_samples",
    ),
    "loader_calls_sys_exit": (
        "good.onnx",
        "loaders:exits",
        "loaders:exits: the data loader called sys.exit(3); a loader must return or raise",
    ),
    "loader_calls_sys_exit_midway": (
        "good.onnx",
        "loaders:exits_midway",
        "loaders:exits_midway: the data loader called sys.exit('bye') at item 1",
    ),
    "loader_module_calls_sys_exit": (
        "good.onnx",
        "exiting_module:load",
        "exiting_module:load: cannot import module 'exiting_module' (SystemExit: 4).",
    ),
    "npy_declares_3_tib": (
        "good.onnx",
        "forged.npy",
        "forged.npy: the array declares shape [206158430208, 4] of float32 (3 TiB) but the file holds "
        "only 4.1 kB of it; the file is truncated or forged.",
    ),
    "npz_declares_3_tib": ("good.onnx", "forged.npz", "forged.npz: array 'x' declares shape"),
    "npy_header_of_60000_bytes": (
        "good.onnx",
        "long_header.npy",
        "long_header.npy: not a readable numpy file (its header is 60000 bytes, more than numpy reads safely",
    ),
    "npz_member_without_npy_suffix": (
        "good.onnx",
        "no_suffix.npz",
        "no_suffix.npz: member 'x' is not a .npy array; a .npz holds only arrays saved by numpy",
    ),
    "external_data_location_with_nul": (
        "external_nul.onnx",
        "x.npz",
        "external_nul.onnx: external data location 'weights\\x00.bin' holds a NUL byte; refused.",
    ),
    "external_data_location_of_5000_characters": (
        "external_long.onnx",
        "x.npz",
        "(5004 characters) cannot be used (File name too long).",
    ),
    "graph_with_a_cycle": (
        "cycle.onnx",
        "x.npz",
        "invalid ONNX model: the graph has a cycle (add_back -> relu_loop -> add_back);",
    ),
    "fixed_batch_4_with_10_samples": (
        "batch4.onnx",
        "x10.npz",
        "x10.npz: 10 calibration samples do not fill whole batches of 4, the fixed batch axis of model "
        "input 'x' [4, 4]; give a multiple of 4 samples (e.g. 8)",
    ),
    "scalar_output": (
        "scalar.onnx",
        "x.npz",
        "the FP32 model's output 'y' is a scalar (0-d), which has no sample axis",
    ),
}

#: The benign twin of each case: the same entry point with the input done right; each must pass.
GATE_TWINS: dict[str, tuple[str, str]] = {
    "loader_that_ends": ("good.onnx", "loaders:good"),
    "npy": ("good.onnx", "x.npy"),
    "npz_member_with_npy_suffix": ("good.onnx", "suffix.npz"),
    "external_data_beside_the_model": ("external_ok.onnx", "x.npz"),
    "fixed_batch_4_with_8_samples": ("batch4.onnx", "x8.npz"),
    "per_sample_output": ("per_sample_sum.onnx", "x.npz"),
}


#: Settings some entries set: a loader that blocks is abandoned after the entry's data_timeout.
ENTRY_SETTINGS = {
    "loader_that_blocks": "    data_timeout: 1.5",
    "loader_over_max_samples": "    max_samples: 48",
}


def manifest(entries: dict[str, tuple[str, str]]) -> str:
    lines = ["defaults:", "  budget: {cosine: 0.5}", "models:"]
    for name, (model, calib) in entries.items():
        lines += [f"  - name: {name}", f"    model: {model}", f"    calib_data: '{calib}'"]
        if name in ENTRY_SETTINGS:
            lines.append(ENTRY_SETTINGS[name])
    return "\n".join(lines) + "\n"


def assert_errors_reported(
    result: pytest.RunResult, root: Path, expected: dict[str, str], entry_point: str
) -> dict[str, dict[str, object]]:
    """Each gate of ``expected`` is an ERROR with its one-sentence message in the JSON report and in the
    Markdown report; nothing in the output is a traceback."""
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    assert "\nE   " not in text, text  # pytest's frame lines: a failure text is never a traceback
    records = {gate["name"]: gate for gate in json.loads((root / "report.json").read_text())["gates"]}
    markdown = (root / "report.md").read_text()
    for name, fragment in expected.items():
        record = records[name]
        assert record["verdict"] == "error", record
        message = one_sentence(str(record["error"]))
        assert fragment in message, (name, message)
        assert name in markdown and message.splitlines()[0][:60] in markdown, (name, markdown)
        log_message(entry_point, name, message)
    return records


def test_hostile_gate_inputs_are_errors_in_every_report_and_their_twins_pass(
    project: pytest.Pytester,
) -> None:
    entries = {name: (model, calib) for name, (model, calib, _) in GATE_CASES.items()}
    (project.path / "int8gate.yaml").write_text(manifest({**entries, **GATE_TWINS}))

    result = project.runpytest_subprocess(
        "--int8-report-json", "report.json", "--int8-report-md", "report.md", timeout=CHILD_SECONDS * 3
    )

    result.assert_outcomes(failed=len(GATE_CASES), passed=len(GATE_TWINS))
    expected = {name: fragment for name, (_, _, fragment) in GATE_CASES.items()}
    records = assert_errors_reported(result, project.path, expected, "manifest")
    for name in GATE_TWINS:
        assert records[name]["verdict"] == "pass", records[name]


# ---- through the command line: exit 2 and one line on stderr -------------------------------------------


def run_cli(args: list[str], cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        code = cli.main(args)
    finally:
        os.chdir(previous)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("name", ["npy_declares_3_tib", "graph_with_a_cycle", "loader_calls_sys_exit"])
def test_the_command_line_exits_2_with_one_line(
    files: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    model, calib, fragment = GATE_CASES[name]

    code, err = run_cli(["check", model, "--calib-data", calib, "--no-bisect"], files, capsys)

    assert code == cli.EXIT_ERROR, err
    line = one_sentence(err.strip())
    assert line.startswith("int8gate: error: ") and fragment in line, line


def test_the_command_line_exits_2_on_a_scalar_output_and_0_on_its_twin(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["check", "scalar.onnx", "--calib-data", "x.npz"], files, capsys)
    assert code == cli.EXIT_ERROR and "is a scalar (0-d)" in one_sentence(err.strip()), err

    code, err = run_cli(["check", "per_sample_sum.onnx", "--calib-data", "x.npz"], files, capsys)
    assert code == cli.EXIT_PASS, err


# ---- hangs and memory: a child process under a wall-time and an address-space limit ----------------------


def limited(memory: int = CHILD_MEMORY, file_size: int | None = None) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return apply


CHILD_COMMANDS = """
import contextlib, io, json, sys

from pytest_int8gate import cli

results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(args)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def run_limited_cli(
    commands: list[list[str]], cwd: Path, *, file_size: int | None = None
) -> list[tuple[int, str]]:
    """``int8gate`` commands run one after the other in one child process under the limits; each one's
    exit code and stderr."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD_COMMANDS, json.dumps(commands)],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=CHILD_SECONDS,
        preexec_fn=limited(file_size=file_size),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [(int(code), str(err)) for code, err in json.loads(done.stdout)]


def test_memory_and_time_stay_bounded_on_forged_sizes_and_an_endless_loader(files: Path) -> None:
    cases = {"forged.npy": "x.npy", "forged.npz": "x.npz", "loaders:forever": "loaders:good"}
    commands = [
        ["check", "good.onnx", "--calib-data", calib, "--no-bisect"]
        for pair in cases.items()
        for calib in pair
    ]

    results = run_limited_cli(commands, files)

    for (broken, benign), (calib, twin) in zip(
        zip(results[::2], results[1::2], strict=True), cases.items(), strict=True
    ):
        assert broken[0] == cli.EXIT_ERROR, (calib, broken)
        assert one_sentence(broken[1].strip()).startswith("int8gate: error: "), broken
        assert benign[0] == cli.EXIT_PASS, (twin, benign)


def test_a_loader_that_spins_without_yielding_is_abandoned_after_the_data_timeout(files: Path) -> None:
    """The loader burns a CPU forever inside its first item; the wait is reported, and abandoned."""
    script = textwrap.dedent(
        """
        import sys
        from pytest_int8gate.data import load_dataset
        from pytest_int8gate.errors import DataError
        from pytest_int8gate.graph import load_model

        info = load_model("good.onnx").info
        try:
            load_dataset("loaders:spins", info, search_path=".", timeout_s=2.0, progress=print)
        except DataError as exc:
            print("DataError:", exc)
            sys.exit(0)
        sys.exit(1)
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=files,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=CHILD_SECONDS,
        preexec_fn=limited(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < CHILD_SECONDS / 2
    assert done.stdout.splitlines()[0] == "reading calibration data loaders:spins", done.stdout
    assert done.stdout.strip().splitlines()[-1] == (
        "DataError: loaders:spins: the data loader yielded no item for 2 s (waiting for item 0), the limit "
        "set by the data_timeout setting (--int8-data-timeout); it was abandoned."
    )


def test_a_loader_that_blocks_is_abandoned_and_one_that_keeps_yielding_is_not(files: Path) -> None:
    info = load_model(files / "good.onnx").info
    waits: list[str] = []
    started = time.monotonic()
    with pytest.raises(DataError) as failure:
        load_dataset("loaders:blocks", info, search_path=files, timeout_s=1.5, progress=waits.append)
    assert time.monotonic() - started < 30
    assert "loaders:blocks: the data loader yielded no item for 1.5 s (waiting for item 1)" in str(
        failure.value
    )
    log_message("library", "loader_blocks", str(failure.value))
    # the twin: each item is slower than nothing but faster than the limit
    slow = load_dataset("loaders:good", info, search_path=files, timeout_s=1.5)
    assert slow.num_samples == 64


def test_the_sample_cap_is_a_setting_and_stops_a_loader_that_never_ends(files: Path) -> None:
    info = load_model(files / "good.onnx").info

    with pytest.raises(DataError) as failure:
        load_dataset("loaders:forever", info, search_path=files, max_samples=1000)
    assert str(failure.value) == (
        "loaders:forever: the calibration data holds more than 1000 samples, the cap set by the max_samples "
        "setting (--int8-max-samples); give fewer samples or raise the cap."
    )
    with pytest.raises(DataError, match=r"x.npz: array 'x' holds 64 samples, more than 63 samples"):
        load_dataset(files / "x.npz", info, max_samples=63)
    assert load_dataset(files / "x.npz", info, max_samples=64).num_samples == 64


def test_an_interrupt_inside_a_loader_still_stops_the_run(files: Path) -> None:
    info = load_model(files / "good.onnx").info
    with pytest.raises(KeyboardInterrupt):
        load_dataset("loaders:interrupts", info, search_path=files)


def test_an_abandoned_loader_is_closed_when_the_consumer_stops(files: Path) -> None:
    """The cap stops the loader's generator (its finally block runs) instead of leaving it to produce."""
    (files / "closing.py").write_text(
        "import numpy as np\nclosed = []\n\ndef endless():\n    try:\n        while True:\n"
        "            yield {'x': np.zeros((64, 4), np.float32)}\n    finally:\n        closed.append(1)\n"
    )
    info = load_model(files / "good.onnx").info
    with pytest.raises(DataError):
        load_dataset("closing:endless", info, search_path=files, max_samples=640)
    import closing  # type: ignore[import-not-found]

    deadline = time.monotonic() + 10
    while not closing.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closing.closed == [1]
    assert not [t for t in threading.enumerate() if t.name == "int8gate loader closing:endless"]


# ---- models --------------------------------------------------------------------------------------------


def test_the_checker_message_is_kept_whole_and_names_the_cycle(files: Path) -> None:
    with pytest.raises(ModelError) as failure:
        load_model(files / "cycle.onnx")
    message = one_sentence(str(failure.value))
    assert "the graph has a cycle (add_back -> relu_loop -> add_back)" in message
    assert "of node: name: add_back OpType: Add is not output of any previous nodes." in message
    assert graph_cycle(onnx.load(files / "good.onnx").graph) is None


def test_a_model_at_an_opset_onnx_runtime_cannot_quantize_says_so(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newest_onnx = onnx.defs.onnx_opset_version()
    newest_ort = newest_cpu_kernel("QuantizeLinear")
    if newest_ort is None or newest_ort >= newest_onnx:
        pytest.skip(f"this ONNX Runtime runs QuantizeLinear at onnx's newest opset {newest_onnx}")
    chain(files / "newest.onnx", opset=newest_onnx)
    chain(files / "supported.onnx", opset=newest_ort)

    code, err = run_cli(["check", "newest.onnx", "--calib-data", "x.npz"], files, capsys)

    assert code == cli.EXIT_ERROR
    line = one_sentence(err.strip())
    assert f"the model's opset {newest_onnx} is newer than ONNX Runtime" in line, line
    assert f"(its newest QuantizeLinear is from opset {newest_ort}); re-export the model at opset" in line
    log_message("CLI", "opset_newer_than_onnxruntime", line)
    code, err = run_cli(["check", "supported.onnx", "--calib-data", "x.npz"], files, capsys)
    assert code == cli.EXIT_PASS, err


def test_a_model_with_external_data_is_checked_by_path_and_one_over_the_limit_is_refused_unread(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real limit is protobuf's 2 GiB; lowered here so that a 48-byte external tensor crosses it. The
    external file is never read: it is replaced by a directory entry that would fail any read."""
    assert load_model(files / "external_ok.onnx").info.layers  # checked by path, prepared, usable
    size = (files / "external_ok.onnx").stat().st_size
    monkeypatch.setattr(graph, "PROTOBUF_LIMIT", size + 40)
    with pytest.raises(ModelError) as failure:
        graph.load_model(files / "external_ok.onnx")
    message = one_sentence(str(failure.value))
    assert f"external_ok.onnx: a valid model, but {size + 48} bytes with its external data" in message
    assert "models this large are not supported yet." in message


# ---- the cache -----------------------------------------------------------------------------------------


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` made unwritable: by its mode, or (as root, whom modes do not stop) immutable."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(directory)], check=False).returncode
    ):
        pytest.skip("running as root without chattr +i: nothing makes a directory read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def build_bytes() -> bytes:
    return b"artefact"


CACHE_CASES = {
    "a_regular_file": "is a file, not a directory",
    "an_entry_path_that_is_a_directory": "is a directory or another non-file; remove it",
    "a_read_only_directory": "(Permission denied)",
}


@pytest.mark.parametrize("case", CACHE_CASES)
def test_an_unusable_cache_is_one_sentence(tmp_path: Path, case: str) -> None:
    root = tmp_path / "cache"
    if case == "a_regular_file":
        root.write_text("not a directory\n")
    else:
        root.mkdir()
    if case == "an_entry_path_that_is_a_directory":
        (root / "calibration" / "k.json" / "inside").mkdir(parents=True)
    context = read_only(root) if case == "a_read_only_directory" else nullcontext()
    with context, pytest.raises(CacheError) as failure:
        ArtifactCache(root).get_or_build("calibration", "k", ".json", build_bytes)
    message = one_sentence(str(failure.value))
    expected = CACHE_CASES[case]
    if case == "a_read_only_directory" and os.geteuid() == 0:
        expected = "(Operation not permitted)"  # an immutable directory refuses even root
    assert expected in message, message
    assert str(root) in message
    log_message("library", f"cache_{case}", message)
    # the twin: a fresh directory beside it
    path, cached = ArtifactCache(tmp_path / "fresh").get_or_build("calibration", "k", ".json", build_bytes)
    assert path.read_bytes() == b"artefact" and not cached


def test_a_cache_under_a_file_size_limit_is_one_sentence_and_exit_2(files: Path) -> None:
    args = ["check", "good.onnx", "--calib-data", "x.npz", "--no-bisect", "--cache-dir", "cache"]

    ((code, err),) = run_limited_cli([args], files, file_size=0)

    assert code == cli.EXIT_ERROR, err
    line = one_sentence(err.strip())
    assert "the cache directory cache cannot be used: could not write cache entry calibration/" in line
    assert "(File too large)" in line, line
    log_message("CLI", "cache_file_size_limit", line)
    assert not list((files / "cache").rglob("*.tmp"))  # the half-written file was removed
    assert (
        cli.main(["check", str(files / "good.onnx"), "--calib-data", str(files / "x.npz"), "--no-bisect"])
        == 0
    )


@pytest.mark.parametrize("case", ["a_regular_file", "an_entry_path_that_is_a_directory"])
def test_an_unusable_cache_errors_the_gate_in_every_report(project: pytest.Pytester, case: str) -> None:
    cache = project.path / "cache"
    if case == "a_regular_file":
        cache.write_text("not a directory\n")
    else:
        # the gate's calibration entry, planted as a directory where the file belongs
        first = project.runpytest(
            "--int8-model", "good.onnx", "--int8-calib-data", "x.npz", "--int8-cache-dir", "cache"
        )
        first.assert_outcomes(passed=1)
        (entry,) = (cache / "calibration").glob("*.json")
        entry.unlink()
        (entry / "planted").mkdir(parents=True)

    result = project.runpytest(
        "--int8-model",
        "good.onnx",
        "--int8-calib-data",
        "x.npz",
        "--int8-cache-dir",
        "cache",
        "--int8-report-json",
        "report.json",
        "--int8-report-md",
        "report.md",
    )

    result.assert_outcomes(failed=1)
    assert_errors_reported(result, project.path, {"good.onnx": CACHE_CASES[case]}, "--int8-model")


def test_reports_honour_the_umask_like_junit(project: pytest.Pytester) -> None:
    previous = os.umask(0o027)
    try:
        project.runpytest(
            "--int8-model",
            "good.onnx",
            "--int8-calib-data",
            "x.npz",
            "--int8-report-json",
            "report.json",
            "--int8-report-md",
            "report.md",
            "--junitxml",
            "junit.xml",
        ).assert_outcomes(passed=1)
    finally:
        os.umask(previous)
    modes = {
        name: stat.S_IMODE((project.path / name).stat().st_mode) for name in ("report.json", "report.md")
    }
    junit = stat.S_IMODE((project.path / "junit.xml").stat().st_mode)
    assert junit == 0o640
    assert modes == {"report.json": junit, "report.md": junit}


def test_cache_entries_are_never_group_or_world_writable(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        path, _ = ArtifactCache(tmp_path / "cache").get_or_build("qdq", "k", ".onnx", build_bytes)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((path.parent / "k.onnx.sha256").stat().st_mode) == 0o644


# ---- calibration tables ----------------------------------------------------------------------------------


def table_variants(table: dict[str, object]) -> dict[str, str]:
    amax = table["amax"]
    assert isinstance(amax, dict)
    tensor = next(iter(amax))
    big = json.dumps({**table, "amax": {tensor: {**amax[tensor], "max": 0}}}).replace(
        '"max": 0', '"max": ' + "9" * 400
    )
    return {
        "nested_100000_deep": "[" * 100_000 + "]" * 100_000,
        "amax_of_400_digits": big,
        "amax_of_5000_digits": big.replace("9" * 400, "9" * 5000),
        "percentile_of_400_digits": json.dumps({**table, "settings": {"percentile": 10**400}}),
    }


TABLE_MESSAGES = {
    "nested_100000_deep": "not a calibration table (JSON nested too deeply).",
    "amax_of_400_digits": "amax 'max' of tensor 'x' is <an integer of 400 digits>; it must be a finite",
    "amax_of_5000_digits": "not a calibration table (invalid JSON: Exceeds the limit (4300 digits)",
    "percentile_of_400_digits": "percentile must satisfy 0 < p <= 100, got <an integer of 401 digits>.",
}


@pytest.mark.parametrize("case", TABLE_MESSAGES)
def test_a_hostile_calibration_table_is_one_line_and_exit_2(
    files: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    code, err = run_cli(["calibrate", "good.onnx", "--data", "x.npz", "--out", "table.json"], files, capsys)
    assert code == cli.EXIT_PASS, err
    (files / f"{case}.json").write_text(table_variants(json.loads((files / "table.json").read_text()))[case])

    code, err = run_cli(
        ["quantize", "good.onnx", "--table", f"{case}.json", "--out", "q.onnx"], files, capsys
    )

    assert code == cli.EXIT_ERROR
    line = one_sentence(err.strip())
    assert line.startswith(f"int8gate: error: {case}.json: ") and TABLE_MESSAGES[case] in line, line
    log_message("CLI", f"table_{case}", line)
    # the twin: the table as written
    code, err = run_cli(["quantize", "good.onnx", "--table", "table.json", "--out", "q.onnx"], files, capsys)
    assert code == cli.EXIT_PASS, err


# ---- messages never render unbounded values ----------------------------------------------------------------


def test_bounded_repr_is_bounded_in_length_and_time() -> None:
    laughs: list[object] = ["lol"] * 9
    for _ in range(9):
        laughs = [laughs] * 9  # 9**10 leaves behind 10 small lists
    started = time.perf_counter()
    shown = bounded_repr(laughs)
    assert time.perf_counter() - started < 1.0
    assert len(shown) <= 80 and shown.startswith("[[[[")
    assert bounded_repr(10**4000) == "<an integer of 4001 digits>"
    assert bounded_repr(10**5000) == "<an integer of about 5001 digits>"
    assert "..." in bounded_repr("w" * 5000) and len(bounded_repr("w" * 5000)) <= 80
    assert bounded_repr({"cosine": 0.98}) == "{'cosine': 0.98}"
    assert bounded_repr("fc1") == "'fc1'"


def test_feed_dicts_from_a_generator_are_read_once_and_capped() -> None:
    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, 64, 16):
            yield {"x": np.arange(start, start + 16, dtype=np.float32)[:, None].repeat(4, axis=1)}

    dataset = Dataset.from_feeds(batches(), source="batches")
    assert dataset.num_samples == 64
    assert np.concatenate([b["x"] for b in dataset.batches(10)])[:, 0].tolist() == list(range(64))
    with pytest.raises(DataError, match=r"^batches: the feed dicts hold more than 40 samples, the cap"):
        Dataset.from_feeds(batches(), source="batches", max_samples=40)
    with pytest.raises(DataError, match=r"^batches: item 1 is a list, not a dict of arrays\.$"):
        Dataset.from_feeds([{"x": np.zeros((2, 4), np.float32)}, [1]], source="batches")


def test_errors_are_int8gate_errors() -> None:
    for kind in (CacheError, CalibrationError, DataError, ModelError):
        assert issubclass(kind, Int8GateError)


def test_the_library_gates_feed_dicts_from_a_generator_and_reports_reading_data(files: Path) -> None:
    x = np.load(files / "x.npz")["x"]
    events: list[tuple[str, str]] = []
    spec = GateSpec(
        model=files / "good.onnx",
        calib_data=str(files / "x.npz"),
        eval_data=({"x": x[start : start + 16]} for start in range(0, 64, 16)),
        budget=Budget.from_mapping({"cosine": 0.5}),
        bisect=False,
    )

    with GatePipeline(spec, progress=lambda stage, message: events.append((stage, message))) as pipeline:
        verdict = pipeline.run()

    assert verdict.passed and verdict.eval_samples == 64
    assert ("data", f"reading calibration data {files / 'x.npz'}") in events


# ---- the manifest --------------------------------------------------------------------------------------

#: Nine lists of nine, each made of the one before: 9**9 "lol"s behind a few hundred bytes, in a key whose
#: type is wrong (batch_size must be an integer), so that a message rendering the value would expand it.
BILLION_LAUGHS = (
    "models:\n"
    "  - name: m\n"
    "    model: good.onnx\n"
    "    calib_data: x.npz\n"
    "    batch_size: [&a [lol, lol, lol, lol, lol, lol, lol, lol, lol],\n"
    + "".join(
        f"      &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}],\n"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "      [*i, *i, *i, *i, *i, *i, *i, *i, *i]]\n"
)

MANIFEST_CASES = {
    "billion_laughs": (
        BILLION_LAUGHS,
        "int8gate.yaml: line 6: the alias *a is not allowed in a manifest; put shared settings under "
        "'defaults:'.",
    ),
    "duplicate_key": (
        "models:\n  - name: m\n    model: good.onnx\n    calib_data: x.npz\n    model: good.onnx\n",
        "int8gate.yaml: line 5: the key 'model' appears twice in one mapping.",
    ),
    "duplicate_budget_key": (
        "models:\n  - {name: m, model: good.onnx, calib_data: x.npz, budget: {cosine: 0.99, cosine: 0.1}}\n",
        "int8gate.yaml: line 2: the key 'cosine' appears twice in one mapping.",
    ),
    "mixed_type_top_level_keys": (
        "1: one\nmodels:\n  - {name: m, model: good.onnx, calib_data: x.npz}\n",
        "int8gate.yaml: unknown top-level key(s) [1]; valid keys are models, defaults.",
    ),
    "nested_100000_deep": (
        "models: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "int8gate.yaml: not valid YAML (nested too deeply).",
    ),
    "wrong_type_value_of_5000_characters": (
        "models:\n  - {name: m, model: good.onnx, calib_data: x.npz, batch_size: '" + "9" * 5000 + "'}\n",
        "int8gate.yaml: entry 1 (m): 'batch_size' must be a positive integer, not '99999",
    ),
    "unknown_key_of_5000_characters": (
        "models:\n  - name: m\n    model: good.onnx\n    calib_data: x.npz\n    ? "
        + "k" * 5000
        + "\n    : 1\n",
        "int8gate.yaml: entry 1 (m): unknown key 'kkkk",
    ),
}
MANIFEST_TWIN = "models:\n  - {name: m, model: good.onnx, calib_data: x.npz, budget: {cosine: 0.5}}\n"


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_a_hostile_manifest_is_one_sentence(files: Path, case: str) -> None:
    text, expected = MANIFEST_CASES[case]
    (files / "int8gate.yaml").write_text(text)
    started = time.monotonic()
    with pytest.raises(ManifestError) as failure:
        load_manifest(files / "int8gate.yaml")
    assert time.monotonic() - started < 10
    message = one_sentence(str(failure.value))
    assert message.replace(f"{files}/", "").startswith(expected), message
    log_message("library", f"manifest_{case}", message)
    (files / "int8gate.yaml").write_text(MANIFEST_TWIN)
    assert [entry.name for entry in load_manifest(files / "int8gate.yaml")] == ["m"]


def test_a_billion_laughs_manifest_is_a_collection_error_in_bounded_time_and_memory(files: Path) -> None:
    (files / "int8gate.yaml").write_text(BILLION_LAUGHS)
    (files / "pytest.ini").write_text("[pytest]\n")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly"],
        cwd=files,
        env={**child_env(), "PYTEST_ADDOPTS": "-p no:hypothesispytest -p no:benchmark"},
        capture_output=True,
        text=True,
        timeout=CHILD_SECONDS,
        preexec_fn=limited(),
        check=False,
    )
    assert time.monotonic() - started < CHILD_SECONDS / 2
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout + done.stderr
    assert "line 6: the alias *a is not allowed in a manifest" in done.stdout, done.stdout
    assert "Traceback" not in done.stdout + done.stderr


# ---- the pytest plugin ---------------------------------------------------------------------------------

README_CONFTEST = """
import numpy as np
import pytest


@pytest.fixture(scope="session")
def int8_model():
    return "two_layers.onnx"  # a str, as the README's example returns


@pytest.fixture(scope="session")
def int8_calibration_data():
    return {"x": np.load("x.npz")["x"]}
"""

README_TESTS = """
import numpy as np
import pytest

X = np.load("x.npz")["x"]


def batches():
    for start in range(0, 64, 16):
        yield {"x": X[start : start + 16]}


@pytest.mark.int8_budget(cosine=0.5)
def test_evaluate_a_generator(int8_gate):
    assert int8_gate.evaluate(batches()).eval_samples == 64


@pytest.mark.int8_budget(cosine=0.5)
def test_evaluate_a_list_of_feed_dicts(int8_gate):
    assert int8_gate.evaluate(list(batches())).eval_samples == 64


@pytest.mark.int8_budget(cosine=0.5)
def test_exclude_one_layer_by_name(int8_gate):
    assert int8_gate.check(exclude="fc1").plan["exclude"] == ["fc1"]


@pytest.mark.int8_budget(cosine=0.5)
def test_exclude_a_layer_that_does_not_exist(int8_gate):
    int8_gate.check(exclude="fc9")


def test_a_kpi_that_crashes(int8_gate):
    int8_gate.check(budget={"kpi_drop": 0.5}, kpi=lambda outputs, labels: outputs[0, 99])
"""


def two_layers(path: Path) -> None:
    rng = np.random.default_rng(0)
    chain(
        path,
        nodes=[
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"),
        ],
        initializers=[
            numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "W1"),
            numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "W2"),
        ],
    )


def test_the_readme_example_str_model_feed_dicts_and_one_layer_name(project: pytest.Pytester) -> None:
    two_layers(project.path / "two_layers.onnx")
    project.makeconftest(README_CONFTEST)
    project.makepyfile(test_readme=README_TESTS)

    result = project.runpytest("--int8-report-json", "report.json", "--int8-report-md", "report.md")

    result.assert_outcomes(passed=3, failed=2)
    text = result.stdout.str()
    assert "AttributeError: 'str' object" not in text and "TypeError" not in text, text
    records = {
        gate["nodeid"].split("::")[1]: gate
        for gate in json.loads((project.path / "report.json").read_text())["gates"]
    }
    unknown = one_sentence(str(records["test_exclude_a_layer_that_does_not_exist"]["error"]))
    assert (
        "plan exclude names layer 'fc9', which is not a quantizable layer of the model; did you mean"
        in unknown
    )
    log_message("marker", "exclude_a_layer_that_does_not_exist", unknown)
    crashed = records["test_a_kpi_that_crashes"]  # a crash is an ERROR in the reports, never missing
    assert crashed["verdict"] == "error" and "IndexError" in str(crashed["error"]), crashed
    assert "test_a_kpi_that_crashes" in (project.path / "report.md").read_text()


def test_a_report_path_that_is_a_directory_is_a_usage_error(project: pytest.Pytester) -> None:
    (project.path / "reports").mkdir()
    args = ("--int8-model", "good.onnx", "--int8-calib-data", "x.npz")

    result = project.runpytest(*args, "--int8-report-json", "reports")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    (line,) = [line for line in text.splitlines() if "--int8-report-json" in line]
    assert line.endswith(f"{project.path / 'reports'} is a directory; name a file to write the report to."), (
        line
    )
    log_message("--int8-model", "report_json_is_a_directory", line)
    project.runpytest(*args, "--int8-report-json", "reports/report.json").assert_outcomes(passed=1)
    assert json.loads((project.path / "reports" / "report.json").read_text())["gates"]


def test_a_model_reachable_through_symlinked_folders_is_collected_once(project: pytest.Pytester) -> None:
    models = project.path / "models"
    models.mkdir()
    shutil.move(project.path / "good.onnx", models / "good.onnx")
    for alias in ("alias", "another_alias", "models/loop"):
        (project.path / alias).symlink_to(models, target_is_directory=True)

    result = project.runpytest(
        "--int8-model", "models/good.onnx", "--int8-calib-data", "x.npz", "--collect-only", "-q"
    )

    items = [line for line in result.stdout.lines if "::int8_gate" in line]
    assert items == ["models/good.onnx::int8_gate"], result.stdout.str()
    # the twin: two different models are two items
    shutil.copy(models / "good.onnx", models / "other.onnx")
    result = project.runpytest(
        "--int8-model",
        "models/good.onnx",
        "--int8-model",
        "models/other.onnx",
        "--int8-calib-data",
        "x.npz",
        "--collect-only",
        "-q",
    )
    assert len([line for line in result.stdout.lines if "::int8_gate" in line]) == 2, result.stdout.str()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, "not a readable JSON report (nested too deeply)."),
        ('{"schema": ' + "9" * 5000 + "}", "not a readable JSON report (Exceeds the limit (4300 digits)"),
    ],
    ids=["nested_100000_deep", "integer_of_5000_digits"],
)
def test_a_hostile_baseline_report_is_a_usage_error_of_one_line(
    project: pytest.Pytester, text: str, expected: str
) -> None:
    (project.path / "baseline.json").write_text(text)
    args = ("--int8-model", "good.onnx", "--int8-calib-data", "x.npz", "--int8-report-json", "report.json")

    result = project.runpytest(*args, "--int8-baseline", "baseline.json")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output, output
    (line,) = [line for line in output.splitlines() if "--int8-baseline" in line]
    assert f"{project.path / 'baseline.json'}: {expected}" in one_sentence(line), line
    log_message("--int8-baseline", "baseline_" + expected[:20], line)
    # the twin: a report this run wrote is a valid baseline
    project.runpytest(*args).assert_outcomes(passed=1)
    shutil.copy(project.path / "report.json", project.path / "baseline.json")
    project.runpytest(*args, "--int8-baseline", "baseline.json").assert_outcomes(passed=1)

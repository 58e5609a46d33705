"""Type-check the TensorRT backend with mypy --strict against TensorRT 10.x and 11.x, and its cuda-python
calls against cuda-bindings' source, without TensorRT, CUDA or a GPU.

TensorRT: ``pytest_int8gate/backends/tensorrt/`` reaches TensorRT only through ``api.TensorRTModule``, a
Protocol whose members are typed with ``tensorrt-stubs``. That wheel cannot be used as installed: it depends
on ``tensorrt``, ships no ``py.typed`` (so mypy ignores it), has syntax errors, and installing it makes
``import tensorrt`` succeed as an empty package, which would change what the test suite sees. So this script
downloads the pinned wheel into a temporary directory, repairs the stubs there (each repair must match
exactly, so a different stub release fails loudly), and runs mypy with an isolated config whose ``mypy_path``
points at the repaired stubs. A probe module checked in the same run proves that mypy really read them.

No ``tensorrt-stubs`` exist for TensorRT 11 (10.13.0.35.1 is the newest). TensorRT 11 removed API rather than
changing what the backend calls: the Python bindings of the v10.16 and v11.1 tags differ, for every member the
backend uses, only by removals (checked by diffing python/src/**/*.cpp of both tags). So the 10.13 stubs less
everything 11.1 removed (``TENSORRT_11_REMOVED_*`` below, written by hand from that diff) stand for 11.x, and
mypy runs a second time against them; the probe proves the removals took effect.

cuda-python: the backend types the calls it makes as ``cuda.CudaRuntime``. cuda-bindings ships no stubs, but
its 12.9.1 and 13.0.0 wheels (the lowest each extra allows) ship their Cython source: each call, enum member
and property the Protocol declares must exist there with the same number of parameters and returned values.

Nothing is installed and nothing outside the temporary directory is written. Exit status: 0 when every check
passes, 1 when one finds an error, 2 when the checks themselves could not be set up.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

STUBS_DISTRIBUTION = "tensorrt-stubs"
STUBS_VERSION = "10.13.0.35.1"
STUBS_WHEEL = f"tensorrt_stubs-{STUBS_VERSION}-py3-none-any.whl"
# sha256 of the wheel as served by files.pythonhosted.org; pins the exact text the repairs below expect.
STUBS_WHEEL_SHA256 = "749a36a1f825db0800a82d0dabbf7ef49f3a9edc1e794c9545fb94a551613fea"
STUB_FILES = ("tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi", "tensorrt_bindings/tensorrt.pyi")
BINDINGS = "tensorrt_bindings/tensorrt.pyi"

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET = "pytest_int8gate/backends/tensorrt"
CUDA_PROTOCOL = REPO_ROOT / TARGET / "cuda.py"


@dataclass(frozen=True)
class Repair:
    """Replace ``old`` by ``new`` in one stub file; ``old`` must occur exactly ``count`` times."""

    path: str
    old: str
    new: str
    count: int
    why: str


REPAIRS = (
    Repair(
        BINDINGS,
        "import numpy\nimport typing\n",
        "import builtins\nimport numpy\nimport typing\nimport typing_extensions\n",
        1,
        "`builtins` is needed by the bool repair below; 22 signatures use `typing_extensions.Buffer` "
        "without importing it, which mypy would turn into Any "
        "(e.g. OnnxParser.parse, Runtime.deserialize_cuda_engine, IBuilderConfig.create_timing_cache).",
    ),
    Repair(
        BINDINGS,
        "power: Weights = None, channel_axis: int) -> IScaleLayer:",
        "power: Weights = None, *, channel_axis: int) -> IScaleLayer:",
        1,
        "syntax error in INetworkDefinition.add_scale_nd: required `channel_axis` follows defaulted "
        "parameters (legal in pybind11, not in Python); keyword-only keeps it required.",
    ),
    Repair(
        BINDINGS,
        ", in: list[",
        ", in_: list[",
        4,
        "syntax error: a parameter named `in` (a keyword) in IPluginV2DynamicExt.get_workspace_size and "
        "IPluginV3One*.configure_plugin / get_workspace_size / on_shape_change.",
    ),
    Repair(
        BINDINGS,
        "    def get_error(self, index: int) -> ...:\n",
        "    def get_error(self, index: int) -> ParserError:\n",
        1,
        "OnnxParser.get_error is declared to return `...` (stubgen's unknown), which mypy turns into Any; "
        "TensorRT documents it as returning tensorrt.ParserError, as OnnxParserRefitter.get_error does.",
    ),
)

# The stubs declare the module constant ``bool: DataType`` (tensorrt.bool), which shadows the builtin in
# every annotation of the same module: each ``-> bool`` would mean "the DataType constant", an invalid type
# that mypy turns into Any. Every annotation use of the name is rewritten to ``builtins.bool``; the constant
# itself stays.
BOOL_ANNOTATIONS = {"tensorrt/__init__.pyi": 0, "tensorrt_bindings/__init__.pyi": 0, BINDINGS: 375}

# TensorRT 11.1 removed these from the 10.16 Python bindings (per class, from the diff of both tags' sources).
TENSORRT_11_REMOVED_CLASSES = (
    "IAlgorithm",
    "IAlgorithmContext",
    "IAlgorithmIOInfo",
    "IAlgorithmSelector",
    "IAlgorithmVariant",
    "IInt8Calibrator",
    "IInt8EntropyCalibrator",
    "IInt8EntropyCalibrator2",
    "IInt8LegacyCalibrator",
    "IInt8MinMaxCalibrator",
    "IStreamReader",
    "CalibrationAlgoType",
    "QuantizationFlag",
)
TENSORRT_11_REMOVED_MEMBERS = {
    "Builder": ("platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32"),
    "BuilderFlag": (
        "BF16",
        "FP16",
        "FP4",
        "FP8",
        "INT4",
        "INT8",
        "OBEY_PRECISION_CONSTRAINTS",
        "PREFER_PRECISION_CONSTRAINTS",
        "REJECT_EMPTY_ALGORITHMS",
        "WEIGHTLESS",
    ),
    "IBuilderConfig": (
        "algorithm_selector",
        "clear_quantization_flag",
        "get_calibration_profile",
        "get_quantization_flag",
        "int8_calibrator",
        "quantization_flags",
        "set_calibration_profile",
        "set_quantization_flag",
    ),
    "ICudaEngine": (
        "create_execution_context_without_device_memory",
        "device_memory_size",
        "get_device_memory_size_for_profile",
        "has_implicit_batch_dimension",
        "minimum_weight_streaming_budget",
        "weight_streaming_budget",
    ),
    "IExecutionContext": ("all_shape_inputs_specified",),
    "ILayer": (
        "output_type_is_set",
        "precision",
        "precision_is_set",
        "reset_output_type",
        "reset_precision",
        "set_output_type",
    ),
    "INormalizationLayer": ("compute_precision",),
    "IPluginRegistry": ("get_plugin_creator", "plugin_creator_list"),
    "ITensor": ("dynamic_range", "reset_dynamic_range", "set_dynamic_range"),
    "NetworkDefinitionCreationFlag": ("EXPLICIT_BATCH",),
    "OnnxParser": ("parse_with_weight_descriptors", "supports_model"),
    "PreviewFeature": ("PROFILE_SHARING_0806",),  # and MULTIDEVICE_RUNTIME_10_16, newer than the 10.13 stubs
    "Refitter": ("get_dynamic_range", "get_tensors_with_dynamic_range", "set_dynamic_range"),
    "TacticSource": ("CUBLAS", "CUBLAS_LT", "CUDNN"),
}

MYPY_INI = """\
[mypy]
python_version = 3.10
strict = True
warn_unreachable = True
mypy_path = {stubs}

[mypy-tensorrt.*,tensorrt_bindings.*]
# The repaired stubs still have many non-blocking errors of their own (stubgen output); only the project's
# use of them is checked.
ignore_errors = True

[mypy-tensorrt_libs.*,onnx.*,onnxruntime.*,cuda.*,filelock.*]
ignore_missing_imports = True
"""

# Checked in the same mypy run. Each expected error proves something, and line 7 must pass (tensorrt.bool is
# still the DataType constant); any other error in it, or a missing one, means mypy did not read the repaired
# stubs as intended and a clean result on the project module would prove nothing.
PROBE = """\
import tensorrt as trt


def probe(parser: trt.OnnxParser) -> None:
    trt.NoSuchAttribute
    parsed: str = parser.parse(b"onnx")
    constant: trt.DataType = trt.bool
    error: str = parser.get_error(0)
"""
PROBE_EXPECTED = (
    (5, "attr-defined", 'Module has no attribute "NoSuchAttribute"'),  # names resolve in the stubs
    (6, "assignment", 'expression has type "bool"'),  # `-> bool` is the builtin after the repair
    (8, "assignment", 'expression has type "ParserError"'),  # the get_error repair took effect
)
# Appended to the probe in both runs: each line passes against 10.13 and fails against the 11.x stubs.
PROBE_11 = """\


def probe_11(builder: trt.Builder, config: trt.IBuilderConfig) -> None:
    trt.BuilderFlag.INT8
    trt.IInt8EntropyCalibrator2
    builder.platform_has_tf32
    config.clear_flag(trt.BuilderFlag.TF32)
"""
PROBE_11_EXPECTED = (
    (12, "attr-defined", 'has no attribute "INT8"'),
    (13, "attr-defined", 'Module has no attribute "IInt8EntropyCalibrator2"'),
    (14, "attr-defined", '"Builder" has no attribute "platform_has_tf32"'),
)

# cuda-bindings wheels whose Cython source the CudaRuntime Protocol is checked against: the lowest release
# each extra allows (tensorrt-cu12: cuda-python>=12.9.1, tensorrt/tensorrt-cu13: cuda-python>=13.0). Later
# releases ship compiled modules only. CPython 3.11 x86-64 builds; the source is the same in every build.
CUDA_BINDINGS_WHEELS = {
    "12.9.1": (
        "cuda_bindings-12.9.1-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "28123f71133e158a376d21dc504392c09544e1504b0dc3510d521a4433778846",
    ),
    "13.0.0": (
        "cuda_bindings-13.0.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "d74f0f6de5006a4ffd2dd30544b10359488d9af71d1cb755205cb3094102a2d9",
    ),
}
CUDA_SOURCES = ("cuda/bindings/runtime.pyx", "cuda/bindings/utils/_get_handle.pyx")

ERROR_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: (?P<message>.*?)(?:  \[(?P<code>[a-z-]+)\])?$")


class SetupError(Exception):
    """The check could not run as designed (download, pinned hash, stub repair or probe)."""


def main() -> int:
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="int8gate-trt-typecheck-") as tmp:
            work = Path(tmp)
            wheel = download_wheel(
                work / "wheel", STUBS_DISTRIBUTION, STUBS_VERSION, STUBS_WHEEL, STUBS_WHEEL_SHA256
            )
            stubs = extract_stubs(wheel, work / "stubs")
            bool_rewrites = repair_stubs(stubs)
            stubs_11 = work / "stubs-11"
            shutil.copytree(stubs, stubs_11)
            removed = remove_tensorrt_11_removals(stubs_11)
            errors_10, output_10 = run_mypy(work / "mypy-10", stubs, PROBE_EXPECTED)
            errors_11, output_11 = run_mypy(work / "mypy-11", stubs_11, PROBE_EXPECTED + PROBE_11_EXPECTED)
            cuda_problems, cuda_checked = check_cuda_surface(work / "cuda")
    except SetupError as exc:
        print(f"typecheck_tensorrt: SETUP FAILED: {exc}", file=sys.stderr)
        return 2
    elapsed = f"in {time.monotonic() - started:.1f} s"
    repairs = f"{len(REPAIRS)} text repairs, {bool_rewrites} bool annotations"
    runs = (
        ("TensorRT 10.x", f"{STUBS_DISTRIBUTION} {STUBS_VERSION} ({repairs})", errors_10, output_10),
        (
            "TensorRT 11.x",
            f"{STUBS_DISTRIBUTION} {STUBS_VERSION} less the {removed} members TensorRT 11.1 removed",
            errors_11,
            output_11,
        ),
    )
    failed = False
    for label, against, errors, output in runs:
        if errors:
            failed = True
            print(output, end="")
            files = ", ".join(sorted({error.split(":", 1)[0] for error in errors}))
            count = f"{len(errors)} error(s) in {files}"
            print(f"typecheck_tensorrt: FAILED: {label}: mypy --strict, {count} against {against}")
        else:
            checked = f"no errors in {TARGET} against {against}"
            print(f"typecheck_tensorrt: OK: {label}: mypy --strict, {checked}, stub probe passed")
    for problem in cuda_problems:
        print(f"typecheck_tensorrt: FAILED: cuda-python: {problem}")
    if cuda_problems:
        failed = True
    else:
        versions = ", ".join(CUDA_BINDINGS_WHEELS)
        print(
            f"typecheck_tensorrt: OK: cuda-python: the {cuda_checked} members of CudaRuntime and the stream "
            f"handle exist with the same arity in cuda-bindings {versions}"
        )
    print(f"typecheck_tensorrt: {'FAILED' if failed else 'OK'} {elapsed}")
    return 1 if failed else 0


def download_wheel(dest: Path, distribution: str, version: str, filename: str, sha256: str) -> Path:
    """One pinned wheel, by exact file name and sha256 (no dependencies: they cannot be installed here)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--dest",
        str(dest),
    ]
    if not filename.endswith("-none-any.whl"):  # a platform wheel: ask for that exact build
        command += [
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
        ]
    command.append(f"{distribution}=={version}")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = dest / filename
    if result.returncode != 0 or not wheel.is_file():
        detail = (result.stderr or result.stdout).strip() or f"{filename} not found after download"
        raise SetupError(f"pip could not download {distribution}=={version}: {detail}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != sha256:
        raise SetupError(f"{filename} has sha256 {digest}, expected {sha256}")
    return wheel


def extract_stubs(wheel: Path, stubs: Path) -> Path:
    """Only the stub packages; the wheel's ``tensorrt_stubs`` re-export package and metadata are unused."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        missing = [name for name in STUB_FILES if name not in names]
        if missing:
            raise SetupError(f"{STUBS_WHEEL} lacks {', '.join(missing)}")
        for name in STUB_FILES:
            archive.extract(name, stubs)
    return stubs


def repair_stubs(stubs: Path) -> int:
    """Apply REPAIRS and the bool rewrite, checking every expected count; the number of bool rewrites."""
    texts = {name: (stubs / name).read_text(encoding="utf-8") for name in STUB_FILES}
    for repair in REPAIRS:
        found = texts[repair.path].count(repair.old)
        if found != repair.count:
            raise SetupError(
                f"stub repair expected {repair.count} occurrence(s) of {repair.old!r} in {repair.path}, "
                f"found {found} ({repair.why})"
            )
        texts[repair.path] = texts[repair.path].replace(repair.old, repair.new)
    rewrites = 0
    for name, text in texts.items():
        text, count = qualify_bool_annotations(text, name)
        if count != BOOL_ANNOTATIONS[name]:
            raise SetupError(
                f"expected {BOOL_ANNOTATIONS[name]} `bool` annotation(s) in {name}, found {count}"
            )
        rewrites += count
        (stubs / name).write_text(text, encoding="utf-8")
    return rewrites


def qualify_bool_annotations(text: str, name: str) -> tuple[str, int]:
    """``bool`` -> ``builtins.bool`` wherever it is used in an annotation; the text and the count."""
    try:
        tree = ast.parse(text, filename=name)
    except SyntaxError as exc:
        raise SetupError(f"the repaired {name} still does not parse: line {exc.lineno}: {exc.msg}") from exc
    declares_bool = any(
        isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "bool"
        for node in tree.body
    )
    annotations: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            annotations.extend(arg.annotation for arg in every if arg is not None and arg.annotation)
            if node.returns is not None:
                annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    spots = sorted(
        {
            (sub.lineno, sub.col_offset)
            for annotation in annotations
            for sub in ast.walk(annotation)
            if isinstance(sub, ast.Name) and sub.id == "bool"
        },
        reverse=True,
    )
    if not declares_bool:
        return text, 0
    # ast offsets are in UTF-8 bytes; rewrite from the end of the file so earlier offsets stay valid.
    lines = text.encode("utf-8").splitlines(keepends=True)
    for lineno, col in spots:
        line = lines[lineno - 1]
        if line[col : col + 4] != b"bool":
            raise SetupError(f"{name}:{lineno}: expected `bool` at column {col}")
        lines[lineno - 1] = line[:col] + b"builtins.bool" + line[col + 4 :]
    return b"".join(lines).decode("utf-8"), len(spots)


def remove_tensorrt_11_removals(stubs: Path) -> int:
    """Delete from the stubs every class and member TensorRT 11.1 removed; the number of members deleted.

    Each listed class must be found once and each listed member at least once in its class, so a stub release
    that moved them fails loudly instead of leaving a removed name in place.
    """
    bindings = stubs / BINDINGS
    text = bindings.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=BINDINGS)
    lines = text.splitlines(keepends=True)
    spans: list[tuple[int, int, str]] = []  # (first line, last line, indentation) of each deleted statement
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    missing = [name for name in TENSORRT_11_REMOVED_CLASSES if name not in classes]
    for name in TENSORRT_11_REMOVED_CLASSES:
        if name in classes:
            spans.append((_first_line(classes[name]), _last_line(classes[name]), ""))
    removed = 0
    for class_name, members in TENSORRT_11_REMOVED_MEMBERS.items():
        if class_name not in classes:
            missing.append(class_name)
            continue
        for member in members:
            found = [node for node in classes[class_name].body if _defines(node, member)]
            if not found:
                missing.append(f"{class_name}.{member}")
            for node in found:
                spans.append((_first_line(node), _last_line(node), " " * node.col_offset))
            removed += bool(found)
    if missing:
        raise SetupError(f"the TensorRT 11 removals do not match {BINDINGS}: not found: {', '.join(missing)}")
    for first, last, indent in sorted(spans, reverse=True):
        # `...` keeps a class body that loses every statement valid.
        lines[first - 1 : last] = [f"{indent}...\n"] if indent else []
    bindings.write_text("".join(lines), encoding="utf-8")
    gone = set(TENSORRT_11_REMOVED_CLASSES)
    for name in ("tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi"):
        path = stubs / name
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if not (line.startswith("from tensorrt_bindings.tensorrt import ") and line.split()[-1] in gone)
        ]
        path.write_text("".join(kept), encoding="utf-8")
    return removed + len(TENSORRT_11_REMOVED_CLASSES)


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    if isinstance(node, ast.Assign):
        return any(isinstance(target, ast.Name) and target.id == name for target in node.targets)
    return False


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(decorator.lineno for decorator in decorators)])


def _last_line(node: ast.stmt) -> int:
    return node.end_lineno or node.lineno


def check_cuda_surface(work: Path) -> tuple[list[str], int]:
    """Problems found comparing ``cuda.CudaRuntime`` with cuda-bindings' source; how many members it has."""
    calls, members = cuda_protocol()
    problems: list[str] = []
    for version, (filename, sha256) in CUDA_BINDINGS_WHEELS.items():
        wheel = download_wheel(work / version, "cuda-bindings", version, filename, sha256)
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            absent = [name for name in CUDA_SOURCES if name not in names]
            if absent:
                raise SetupError(f"{filename} lacks {', '.join(absent)}")
            runtime, handle = (archive.read(name).decode("utf-8") for name in CUDA_SOURCES)
        for name, (parameters, returned) in calls.items():
            found = re.search(rf"^def {name}\((.*?)\):\n(.*?)(?=^def |^cdef class |\Z)", runtime, re.M | re.S)
            if not found:
                problems.append(f"cuda-bindings {version} has no runtime.{name}")
                continue
            arity = len([part for part in found.group(1).split(",") if part.strip()])
            if arity != parameters:
                problems.append(
                    f"runtime.{name} takes {arity} argument(s) in cuda-bindings {version}, not {parameters}"
                )
            returns = re.findall(r"^    return \((.*?)\)$", found.group(2), re.M)
            sizes = {len([part for part in value.split(",") if part.strip()]) for value in returns}
            if sizes != {returned}:
                found_sizes = sorted(sizes)
                problems.append(
                    f"runtime.{name} returns {found_sizes} value(s) in cuda-bindings {version}, "
                    f"not {returned}"
                )
        for owner, member in members:
            if owner == "cudaDeviceProp":
                body = runtime[runtime.find("cdef class cudaDeviceProp") :]
                body = body[: body.find("\ncdef class ", 1)]
                present = re.search(rf"@property\s+def {member}\(self\)", body) is not None
            else:
                present = re.search(rf"^class {owner}\(.*?^    {member} = ", runtime, re.M | re.S) is not None
            if not present:
                problems.append(f"cuda-bindings {version} has no {owner}.{member}")
        if (
            not re.search(r"^def get_cuda_native_handle\(", handle, re.M)
            or "runtime.cudaStream_t" not in handle
        ):
            problems.append(f"cuda-bindings {version} cannot give the native handle of a cudaStream_t")
    return problems, len(calls) + len(members)


def cuda_protocol() -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """From cuda.py: each CudaRuntime call with its parameter count and tuple length, and the enum members
    and device properties the backend reads, as (cuda-bindings class, member)."""
    tree = ast.parse(CUDA_PROTOCOL.read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    calls: dict[str, tuple[int, int]] = {}
    for node in classes["CudaRuntime"].body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("cuda") and not node.decorator_list:
            returned = node.returns
            if not (isinstance(returned, ast.Subscript) and isinstance(returned.value, ast.Name)):
                raise SetupError(f"CudaRuntime.{node.name} does not return tuple[...]")
            elements = returned.slice.elts if isinstance(returned.slice, ast.Tuple) else [returned.slice]
            calls[node.name] = (len(node.args.posonlyargs) + len(node.args.args) - 1, len(elements))
    owners = {
        "CudaErrorCodes": "cudaError_t",
        "CudaMemcpyKinds": "cudaMemcpyKind",
        "CudaDeviceProperties": "cudaDeviceProp",
    }
    members = [
        (owner, node.name)
        for protocol, owner in owners.items()
        for node in classes[protocol].body
        if isinstance(node, ast.FunctionDef)
    ]
    if not calls or len(members) < 5:
        raise SetupError(f"{CUDA_PROTOCOL} no longer declares the CudaRuntime Protocol this check reads")
    return calls, members


def run_mypy(
    work: Path, stubs: Path, probe_expected: tuple[tuple[int, str, str], ...]
) -> tuple[list[str], str]:
    """mypy on the target and the probe; the target's error lines and mypy's output without the probe."""
    work.mkdir()
    config = work / "mypy.ini"
    config.write_text(MYPY_INI.format(stubs=stubs), encoding="utf-8")
    probe = work / "probe" / "int8gate_tensorrt_stub_probe.py"
    probe.parent.mkdir()
    probe.write_text(PROBE + PROBE_11, encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(config),
        "--cache-dir",
        str(work / "mypy-cache"),
        "--no-error-summary",
        "--no-pretty",
        "--no-color-output",
        "--show-error-codes",
        TARGET,
        str(probe),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1) or result.stderr.strip():
        detail = (result.stderr or result.stdout).strip()
        raise SetupError(f"mypy exited with status {result.returncode}: {detail}")
    probe_prefix = f"{probe}:"
    probe_lines = [line for line in result.stdout.splitlines() if line.startswith(probe_prefix)]
    other_lines = [line for line in result.stdout.splitlines() if not line.startswith(probe_prefix)]
    check_probe(probe_lines, probe_expected, stubs.name)
    errors = [line for line in other_lines if ERROR_LINE.match(line)]
    return errors, "".join(f"{line}\n" for line in other_lines)


def check_probe(lines: list[str], probe_expected: tuple[tuple[int, str, str], ...], stubs: str) -> None:
    found = []
    for line in lines:
        match = ERROR_LINE.match(line)
        if match:
            found.append((int(match["line"]), match["code"] or "", match["message"]))

    def expected(line: int, code: str, message: str, want: tuple[int, str, str]) -> bool:
        return line == want[0] and code == want[1] and want[2] in message

    unexpected = [
        f"line {line} [{code}] {message}"
        for line, code, message in found
        if not any(expected(line, code, message, want) for want in probe_expected)
    ]
    missing = [
        f"line {want[0]} [{want[1]}] ...{want[2]}..."
        for want in probe_expected
        if not any(expected(*error, want) for error in found)
    ]
    if unexpected or missing:
        raise SetupError(
            f"mypy did not read the TensorRT stubs in {stubs} as expected (stub probe): "
            f"missing errors: {'; '.join(missing) or 'none'}; "
            f"unexpected errors: {'; '.join(unexpected) or 'none'}"
        )


if __name__ == "__main__":
    sys.exit(main())

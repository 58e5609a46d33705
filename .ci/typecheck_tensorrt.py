"""Type-check the TensorRT backend with mypy --strict against PyPI's tensorrt-stubs, without TensorRT.

TensorRT cannot be installed in CI, so ``pytest_int8gate/backends/tensorrt.py`` is checked statically against
``tensorrt-stubs``. That wheel cannot be used as installed: it depends on ``tensorrt``, ships no ``py.typed``
(so mypy ignores it), has syntax errors, and installing it makes ``import tensorrt`` succeed as an empty
package, which would change what the test suite sees. So this script downloads the pinned wheel into a
temporary directory, repairs the stubs there (each repair must match exactly, so a different stub release
fails loudly), and runs mypy with an isolated config whose ``mypy_path`` points at the repaired stubs.
A probe module checked in the same run proves that mypy really read them.

Nothing is installed and nothing outside the temporary directory is written. Exit status: 0 when mypy finds
no error, 1 when it does, 2 when the check itself could not be set up.
"""

from __future__ import annotations

import ast
import hashlib
import re
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

ERROR_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: (?P<message>.*?)(?:  \[(?P<code>[a-z-]+)\])?$")


class SetupError(Exception):
    """The check could not run as designed (download, pinned hash, stub repair or probe)."""


def main() -> int:
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="int8gate-trt-typecheck-") as tmp:
            work = Path(tmp)
            wheel = download_wheel(work / "wheel")
            stubs = extract_stubs(wheel, work / "stubs")
            bool_rewrites = repair_stubs(stubs)
            errors, output = run_mypy(work, stubs)
    except SetupError as exc:
        print(f"typecheck_tensorrt: SETUP FAILED: {exc}", file=sys.stderr)
        return 2
    against = (
        f"against {STUBS_DISTRIBUTION} {STUBS_VERSION} ({len(REPAIRS)} text repairs, "
        f"{bool_rewrites} bool annotations, stub probe passed) in {time.monotonic() - started:.1f} s"
    )
    if errors:
        print(output, end="")
        files = ", ".join(sorted({error.split(":", 1)[0] for error in errors}))
        print(f"typecheck_tensorrt: FAILED: mypy --strict, {len(errors)} error(s) in {files} {against}")
        return 1
    print(f"typecheck_tensorrt: OK: mypy --strict, no errors in {TARGET} {against}")
    return 0


def download_wheel(dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",  # the stubs depend on `tensorrt` itself, which cannot be installed
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        f"{STUBS_DISTRIBUTION}=={STUBS_VERSION}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = dest / STUBS_WHEEL
    if result.returncode != 0 or not wheel.is_file():
        detail = (result.stderr or result.stdout).strip() or f"{STUBS_WHEEL} not found after download"
        raise SetupError(f"pip could not download {STUBS_DISTRIBUTION}=={STUBS_VERSION}: {detail}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != STUBS_WHEEL_SHA256:
        raise SetupError(f"{STUBS_WHEEL} has sha256 {digest}, expected {STUBS_WHEEL_SHA256}")
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


def run_mypy(work: Path, stubs: Path) -> tuple[list[str], str]:
    """mypy on the target and the probe; the target's error lines and mypy's output without the probe."""
    config = work / "mypy.ini"
    config.write_text(MYPY_INI.format(stubs=stubs), encoding="utf-8")
    probe = work / "probe" / "int8gate_tensorrt_stub_probe.py"
    probe.parent.mkdir()
    probe.write_text(PROBE, encoding="utf-8")
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
    check_probe(probe_lines)
    errors = [line for line in other_lines if ERROR_LINE.match(line)]
    return errors, "".join(f"{line}\n" for line in other_lines)


def check_probe(lines: list[str]) -> None:
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
        if not any(expected(line, code, message, want) for want in PROBE_EXPECTED)
    ]
    missing = [
        f"line {want[0]} [{want[1]}] ...{want[2]}..."
        for want in PROBE_EXPECTED
        if not any(expected(*error, want) for error in found)
    ]
    if unexpected or missing:
        raise SetupError(
            "mypy did not read the repaired TensorRT stubs as expected (stub probe): "
            f"missing errors: {'; '.join(missing) or 'none'}; "
            f"unexpected errors: {'; '.join(unexpected) or 'none'}"
        )


if __name__ == "__main__":
    sys.exit(main())

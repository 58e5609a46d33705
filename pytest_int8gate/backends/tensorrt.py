"""TensorRT 10.x / 11.x on a CUDA GPU: FP32 and explicit-Q/DQ INT8 engines built from ONNX and cached.

Written against TensorRT's documented Python API and cuda-python; unverified on TensorRT in this project's CI
(TensorRT cannot be installed there), where only the pure helpers below run.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..cache import ArtifactCache, atomic_write_bytes
from ..errors import BackendError
from .base import BackendInfo, ClosingRunner

if TYPE_CHECKING:
    import tensorrt as trt  # type: ignore[import-not-found,import-untyped,unused-ignore]

_LOG = logging.getLogger(__name__)

#: Bump when the way engines are built changes, so that old cached engines are never loaded.
ENGINE_CACHE_FORMAT = 1
PRECISIONS = ("fp32", "int8")
DEFAULT_BATCH_SIZES = (1, 32, 32)
INSTALL_HINT = "pip install 'pytest-int8gate[tensorrt]'"
MIN_TENSORRT_MAJOR = 10
#: Parser errors listed in a failure message; the rest are counted.
MAX_PARSER_ERRORS_SHOWN = 5
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

Dim = int | str | None
ProfileShapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


# ---------------------------------------------------------------------------------------------------------
# Pure helpers: testable without TensorRT or a GPU.


def engine_cache_key(
    model_bytes: bytes,
    *,
    precision: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    settings: Mapping[str, object],
) -> str:
    """The file-name key of a serialized engine: changes with the model, precision, TensorRT version,
    GPU, compute capability and every builder setting, so an engine from elsewhere is never loaded."""
    if precision not in PRECISIONS:
        raise BackendError(f"unknown engine precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    fields = {
        "format": ENGINE_CACHE_FORMAT,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "precision": precision,
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "compute_capability": compute_capability,
        "settings": {str(name): value for name, value in settings.items()},
    }
    text = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return f"{precision}-{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def timing_cache_filename(trt_version: str, gpu_name: str, compute_capability: str) -> str:
    """The timing-cache file shared by every engine built with one TensorRT version on one GPU model."""
    text = json.dumps([trt_version, gpu_name, compute_capability])
    return f"timing-{hashlib.sha256(text.encode()).hexdigest()[:24]}.cache"


def build_profile_shapes(
    input_shapes: Mapping[str, tuple[Dim, ...]], min_batch: int, opt_batch: int, max_batch: int
) -> dict[str, ProfileShapes]:
    """(min, opt, max) shapes per input: a dynamic axis 0 takes the batch sizes, static axes stay.

    A dynamic axis is a symbolic name, None or a negative size; only axis 0 may be dynamic, because an
    optimisation profile needs a range for every dynamic axis and only the batch range is known here.
    """
    check_batch_sizes(min_batch, opt_batch, max_batch)
    profiles: dict[str, ProfileShapes] = {}
    for name, shape in input_shapes.items():
        low: list[int] = []
        best: list[int] = []
        high: list[int] = []
        for axis, dim in enumerate(shape):
            if isinstance(dim, int) and dim >= 0:
                low.append(dim)
                best.append(dim)
                high.append(dim)
            elif axis == 0:
                low.append(min_batch)
                best.append(opt_batch)
                high.append(max_batch)
            else:
                raise BackendError(
                    f"input {name!r} has a dynamic axis {axis} ({_dim_text(dim)}); the TensorRT backend only "
                    f"varies the batch axis 0, so export the model with a fixed size for axis {axis}."
                )
        profiles[name] = (tuple(low), tuple(best), tuple(high))
    return profiles


def check_batch_sizes(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise BackendError(
            "TensorRT profile batch sizes must satisfy 1 <= min <= opt <= max; got "
            f"min={min_batch}, opt={opt_batch}, max={max_batch}."
        )


def format_parser_errors(errors: Sequence[tuple[str, str]]) -> str:
    """One message from TensorRT ONNX-parser errors given as (node name, description) pairs."""
    if not errors:
        return "the parser rejected the model without reporting an error"
    parts = []
    for node, description in errors[:MAX_PARSER_ERRORS_SHOWN]:
        text = " ".join(description.split()).rstrip(".") or "no description"
        parts.append(f"node {node!r}: {text}" if node else text)
    hidden = len(errors) - MAX_PARSER_ERRORS_SHOWN
    if hidden > 0:
        parts.append(f"and {hidden} more error{'s' if hidden > 1 else ''}")
    return "; ".join(parts)


def count_qdq_nodes(model: onnx.ModelProto) -> int:
    return sum(1 for node in model.graph.node if node.op_type in _QDQ_OPS)


def onnx_input_dims(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Graph inputs (initializers excluded) with their dims: size, symbolic name or None."""
    initializers = {init.name for init in model.graph.initializer}
    dims: dict[str, tuple[Dim, ...]] = {}
    for value_info in model.graph.input:
        if value_info.name in initializers:
            continue
        shape: list[Dim] = []
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            else:
                shape.append(dim.dim_param or None)
        dims[value_info.name] = tuple(shape)
    return dims


def _dim_text(dim: Dim) -> str:
    if isinstance(dim, str):
        return f"symbolic size {dim!r}"
    return "unknown size" if dim is None else f"size {dim}"


# ---------------------------------------------------------------------------------------------------------
# Availability and CUDA.


def unavailable_reason() -> str | None:
    """None when TensorRT, cuda-python and a CUDA GPU are all present; otherwise why not, as a clause."""
    try:
        trt_module = importlib.import_module("tensorrt")
    except ModuleNotFoundError as exc:
        if exc.name == "tensorrt":
            return f"the 'tensorrt' Python package is not installed ({INSTALL_HINT})"
        return f"the 'tensorrt' Python package cannot be imported ({_first_line(exc)})"
    except Exception as exc:  # a broken install raises ImportError, OSError or the wheel stub's error
        return f"the 'tensorrt' Python package cannot be imported ({_first_line(exc)})"
    if not hasattr(trt_module, "Builder"):
        # An empty namespace package, e.g. left by installing only tensorrt-stubs.
        return f"the 'tensorrt' Python package is not installed, only its type stubs ({INSTALL_HINT})"
    version = str(getattr(trt_module, "__version__", "unknown"))
    if _major_version(version) < MIN_TENSORRT_MAJOR:
        return (
            f"TensorRT {version} is installed but this backend needs TensorRT {MIN_TENSORRT_MAJOR} or newer"
        )
    return cuda_unavailable_reason()


def cuda_unavailable_reason() -> str | None:
    """None when cuda-python imports and sees at least one CUDA GPU; otherwise why not, as a clause."""
    try:
        cudart = import_cudart()
    except ImportError as exc:
        return f"the 'cuda-python' package cannot be imported ({_first_line(exc)}; {INSTALL_HINT})"
    try:
        result = cudart.cudaGetDeviceCount()
    except Exception as exc:  # cuda-python raises when it cannot load the CUDA driver library at all
        return f"no CUDA GPU is visible (cudaGetDeviceCount raised {_first_line(exc)})"
    if result[0] != cudart.cudaError_t.cudaSuccess:
        return f"no CUDA GPU is visible (cudaGetDeviceCount returned {_cuda_error_text(cudart, result[0])})"
    if int(result[1]) < 1:
        return "no CUDA GPU is visible"
    return None


def import_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def cuda_check(cudart: Any, result: Any, call: str) -> Any:
    """The value a cuda-python call returned after its error code, or None; BackendError on failure."""
    error = result[0]
    if error != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call {call} failed with {_cuda_error_text(cudart, error)}.")
    return result[1] if len(result) > 1 else None


def _cuda_error_text(cudart: Any, error: Any) -> str:
    name = str(getattr(error, "name", error))
    with contextlib.suppress(Exception):
        described = cudart.cudaGetErrorString(error)
        if described[0] == cudart.cudaError_t.cudaSuccess:
            text = described[1]
            return f"{name} ({text.decode(errors='replace') if isinstance(text, bytes) else text})"
    return name


@dataclass(frozen=True)
class GpuInfo:
    """The CUDA device engines are built for; part of every cache key."""

    name: str
    compute_capability: str

    def __str__(self) -> str:
        return f"{self.name} sm_{self.compute_capability}"


def current_gpu(cudart: Any) -> GpuInfo:
    device = cuda_check(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    raw_name = props.name
    name = raw_name.decode(errors="replace") if isinstance(raw_name, bytes) else str(raw_name)
    return GpuInfo(name=name.rstrip("\x00").strip(), compute_capability=f"{props.major}{props.minor}")


def _major_version(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------------------
# TensorRT.


class TensorRTLog:
    """What TensorRT logged: errors are kept for the failure message, warnings go to ``logging``."""

    def __init__(self) -> None:
        self.errors: collections.deque[str] = collections.deque(maxlen=10)

    def clear(self) -> None:
        self.errors.clear()

    def record(self, severity: int, message: str, *, error_level: int, warning_level: int) -> None:
        if severity <= error_level:
            self.errors.append(" ".join(message.split()))
        elif severity <= warning_level:
            _LOG.warning("TensorRT: %s", message)

    def summary(self) -> str:
        return "; ".join(list(self.errors)[-3:]) or "TensorRT logged no error message"


def _make_logger(log: TensorRTLog) -> trt.ILogger:
    import tensorrt as trt  # type: ignore[import-not-found,import-untyped,unused-ignore]

    error_level = int(trt.ILogger.Severity.ERROR)
    warning_level = int(trt.ILogger.Severity.WARNING)

    class RecordingLogger(trt.ILogger):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            log.record(int(severity), msg, error_level=error_level, warning_level=warning_level)

    return RecordingLogger()


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[axis]) for axis in range(len(dims)))


class TensorRTBackend:
    """Builds strongly typed TensorRT engines: FP32 (TF32 off) from the FP32 model, INT8 from the Q/DQ model.

    Engines are cached under ``cache_dir`` (in memory when it is None) by :func:`engine_cache_key`.
    """

    name = "tensorrt"

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        workspace_bytes: int = 1 << 30,
        batch_sizes: tuple[int, int, int] = DEFAULT_BATCH_SIZES,
    ) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise BackendError(f"the TensorRT backend cannot be used because {reason}.")
        if workspace_bytes <= 0:
            raise BackendError(f"TensorRT workspace_bytes must be positive; got {workspace_bytes}.")
        check_batch_sizes(*batch_sizes)
        import tensorrt as trt  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self.workspace_bytes = workspace_bytes
        self.batch_sizes = batch_sizes
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.trt_version = str(trt.__version__)
        self._major = _major_version(self.trt_version)
        self._cudart = import_cudart()
        self.gpu = current_gpu(self._cudart)
        self._disk = ArtifactCache(self.cache_dir) if self.cache_dir is not None else None
        self._memory: dict[str, bytes] = {}
        self._log = TensorRTLog()
        # TensorRT requires the logger and runtime to outlive every engine; runners keep references too.
        self._logger = _make_logger(self._log)
        self._runtime = trt.Runtime(self._logger)

    def fp32_runner(self, model: onnx.ModelProto) -> TensorRTRunner:
        return self._runner(model, "fp32")

    def int8_runner(self, model: onnx.ModelProto) -> TensorRTRunner:
        return self._runner(model, "int8")

    def describe(self) -> BackendInfo:
        return BackendInfo(
            backend="tensorrt",
            version=self.trt_version,
            device=str(self.gpu),
            precision="int8",
            options=self._options(),
        )

    def _options(self) -> dict[str, str]:
        low, best, high = self.batch_sizes
        return {
            "workspace_bytes": str(self.workspace_bytes),
            "batch_profile": f"{low}/{best}/{high}",
            "engine_cache": str(self.cache_dir) if self.cache_dir is not None else "memory",
        }

    def _settings(self, precision: str) -> dict[str, object]:
        return {
            "workspace_bytes": self.workspace_bytes,
            "batch_sizes": list(self.batch_sizes),
            "strongly_typed": True,
            "tf32": "cleared" if precision == "fp32" else "default",
        }

    def _runner(self, model: onnx.ModelProto, precision: str) -> TensorRTRunner:
        try:
            model_bytes = model.SerializeToString(deterministic=True)
        except ValueError as exc:  # protobuf refuses models above 2 GB
            raise BackendError(f"the {precision} model cannot be serialized for TensorRT: {exc}") from exc
        key = engine_cache_key(
            model_bytes,
            precision=precision,
            trt_version=self.trt_version,
            gpu_name=self.gpu.name,
            compute_capability=self.gpu.compute_capability,
            settings=self._settings(precision),
        )
        engine_bytes, cached = self._engine_bytes(key, lambda: self._build(model, model_bytes, precision))
        engine = self._deserialize(engine_bytes)
        if engine is None and cached:
            _LOG.warning("TensorRT could not load the cached engine %s; rebuilding it.", key)
            self._forget(key)
            engine_bytes, cached = self._engine_bytes(key, lambda: self._build(model, model_bytes, precision))
            engine = self._deserialize(engine_bytes)
        if engine is None:
            raise BackendError(
                f"TensorRT could not deserialize the {precision} engine it built: {self._log.summary()}."
            )
        options = self._options()
        options["engine"] = "cached" if cached else "built"
        options["tf32"] = "off" if precision == "fp32" else "default"
        if precision == "int8":
            options["qdq_nodes"] = str(count_qdq_nodes(model))
        info = BackendInfo(
            backend="tensorrt",
            version=self.trt_version,
            device=str(self.gpu),
            precision=precision,
            options=options,
        )
        return TensorRTRunner(
            engine,
            output_names=tuple(output.name for output in model.graph.output),
            info=info,
            cudart=self._cudart,
            log=self._log,
            batch_sizes=self.batch_sizes,
            keep_alive=(self._runtime, self._logger),
        )

    def _engine_bytes(self, key: str, build: Callable[[], bytes]) -> tuple[bytes, bool]:
        if self._disk is None:
            if key in self._memory:
                return self._memory[key], True
            data = build()
            self._memory[key] = data
            return data, False
        try:
            path, cached = self._disk.get_or_build("tensorrt", key, ".engine", build)
            return path.read_bytes(), cached
        except OSError as exc:
            raise BackendError(f"the TensorRT engine cache in {self.cache_dir} is unusable: {exc}.") from exc

    def _forget(self, key: str) -> None:
        self._memory.pop(key, None)
        if self._disk is not None:
            self._disk.path("tensorrt", key, ".engine").unlink(missing_ok=True)

    def _deserialize(self, engine_bytes: bytes) -> trt.ICudaEngine | None:
        self._log.clear()
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(engine_bytes)
        return engine

    def _build(self, model: onnx.ModelProto, model_bytes: bytes, precision: str) -> bytes:
        import tensorrt as trt  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self._log.clear()
        builder = trt.Builder(self._logger)
        # TensorRT 11 networks are always strongly typed and deprecate the flag; 10.x must ask for it so
        # that the Q/DQ nodes, not builder precision flags, decide every layer's precision.
        flags = 0 if self._major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(model_bytes):
            raise BackendError(
                f"TensorRT could not parse the {precision} model: "
                f"{format_parser_errors(_parser_errors(parser))}."
            )
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if precision == "fp32":
            tf32 = getattr(trt.BuilderFlag, "TF32", None)
            if tf32 is not None:  # TF32 rounds FP32 matmul inputs to 10 mantissa bits: not a reference
                config.clear_flag(tf32)
        self._add_profile(builder, network, config, model)
        timing_cache = self._attach_timing_cache(config)
        serialized: trt.IHostMemory | None = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"TensorRT could not build the {precision} engine: {self._log.summary()}.")
        self._store_timing_cache(timing_cache)
        return bytes(memoryview(serialized))

    def _add_profile(
        self,
        builder: trt.Builder,
        network: trt.INetworkDefinition,
        config: trt.IBuilderConfig,
        model: onnx.ModelProto,
    ) -> None:
        import tensorrt as trt  # type: ignore[import-not-found,import-untyped,unused-ignore]

        named_dims = onnx_input_dims(model)
        shapes: dict[str, tuple[Dim, ...]] = {}
        for index in range(network.num_inputs):
            tensor = network.get_input(index)
            if tensor.is_shape_tensor:
                raise BackendError(
                    f"input {tensor.name!r} is a shape tensor, which the TensorRT backend cannot feed; "
                    "export the model with that input folded into a constant."
                )
            names = named_dims.get(tensor.name, ())
            shapes[tensor.name] = tuple(
                size if size >= 0 else (names[axis] if axis < len(names) else None)
                for axis, size in enumerate(_dims(tensor.shape))
            )
        dynamic = {
            name: shape
            for name, shape in build_profile_shapes(shapes, *self.batch_sizes).items()
            if shape[0] != shape[2]
        }
        if not dynamic:
            return
        profile = builder.create_optimization_profile()
        for name, (low, best, high) in dynamic.items():
            profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(best)), trt.Dims(list(high)))
        if config.add_optimization_profile(profile) < 0:
            raise BackendError(f"TensorRT rejected the optimisation profile: {self._log.summary()}.")

    def _timing_cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        name = timing_cache_filename(self.trt_version, self.gpu.name, self.gpu.compute_capability)
        return self.cache_dir / "tensorrt" / name

    def _attach_timing_cache(self, config: trt.IBuilderConfig) -> trt.ITimingCache:
        path = self._timing_cache_path()
        if path is not None and path.is_file():
            try:
                cache: trt.ITimingCache | None = config.create_timing_cache(path.read_bytes())
                if cache is not None and config.set_timing_cache(cache, False):
                    return cache
            except Exception as exc:  # a damaged cache file only costs build time: start an empty one
                _LOG.warning("ignoring the TensorRT timing cache %s: %s", path, _first_line(exc))
            else:
                _LOG.warning("ignoring the TensorRT timing cache %s: TensorRT rejected it", path)
        fresh: trt.ITimingCache | None = config.create_timing_cache(b"")
        if fresh is None or not config.set_timing_cache(fresh, False):
            raise BackendError(f"TensorRT could not create a timing cache: {self._log.summary()}.")
        return fresh

    def _store_timing_cache(self, cache: trt.ITimingCache) -> None:
        path = self._timing_cache_path()
        if path is None:
            return
        serialized: trt.IHostMemory | None = cache.serialize()
        if serialized is None:
            return
        try:
            atomic_write_bytes(path, bytes(memoryview(serialized)))
        except OSError as exc:  # the engine is built; a lost timing cache only slows the next build
            _LOG.warning("could not write the TensorRT timing cache %s: %s", path, exc)


def _parser_errors(parser: trt.OnnxParser) -> list[tuple[str, str]]:
    errors = []
    for index in range(parser.num_errors):
        error: trt.ParserError = parser.get_error(index)
        node = error.node_name() if hasattr(error, "node_name") else ""
        if not node and error.node() >= 0:
            node = f"#{error.node()}"
        errors.append((str(node), str(error.desc())))
    return errors


class TensorRTRunner(ClosingRunner):
    """One engine with its execution context, CUDA stream and device buffers (grown on demand)."""

    def __init__(
        self,
        engine: trt.ICudaEngine,
        *,
        output_names: tuple[str, ...],
        info: BackendInfo,
        cudart: Any,
        log: TensorRTLog,
        batch_sizes: tuple[int, int, int],
        keep_alive: tuple[object, ...] = (),
    ) -> None:
        import tensorrt as trt  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self._buffers: dict[str, tuple[int, int]] = {}
        self._stream: Any = None
        self._cudart = cudart
        self._engine = engine
        self._keep_alive = keep_alive
        self._info = info
        self._log = log
        self._batch_sizes = batch_sizes
        context: trt.IExecutionContext | None = engine.create_execution_context()
        if context is None:
            raise BackendError(
                f"TensorRT could not create an execution context for the {info.precision} engine: "
                f"{log.summary()}."
            )
        self._context = context
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        self._input_names = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._engine_outputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        missing = [name for name in output_names if name not in self._engine_outputs]
        if missing:
            raise BackendError(
                f"the TensorRT {info.precision} engine lacks the model output(s) {', '.join(missing)}."
            )
        self._output_names = output_names
        self._dtypes: dict[str, np.dtype[Any]] = {}
        for name in names:
            trt_dtype = engine.get_tensor_dtype(name)
            try:
                self._dtypes[name] = np.dtype(trt.nptype(trt_dtype))  # type: ignore[no-untyped-call,unused-ignore]
            except TypeError as exc:
                raise BackendError(
                    f"tensor {name!r} of the TensorRT {info.precision} engine has type {trt_dtype}, "
                    "which numpy cannot hold."
                ) from exc
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names

    def describe(self) -> BackendInfo:
        return self._info

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._stream is None:
            raise BackendError(f"the TensorRT {self._info.precision} runner was closed.")
        cudart = self._cudart
        precision = self._info.precision
        missing = [name for name in self._input_names if name not in feeds]
        if missing:
            raise BackendError(f"the TensorRT {precision} engine needs input(s) {', '.join(missing)}.")
        unknown = sorted(set(feeds) - set(self._input_names))
        if unknown:
            raise BackendError(f"{', '.join(unknown)} are not inputs of the TensorRT {precision} engine.")
        self._log.clear()
        # Host arrays must stay alive until the stream is synchronized: the copies are asynchronous.
        inputs: dict[str, np.ndarray] = {}
        for name in self._input_names:
            host = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            if not self._context.set_input_shape(name, host.shape):
                low, _, high = self._batch_sizes
                raise BackendError(
                    f"TensorRT rejected shape {list(host.shape)} for input {name!r}; the {precision} engine "
                    f"was built for batch sizes {low} to {high} (TensorRTBackend(batch_sizes=...))."
                )
            self._bind(name, host.nbytes)
            if host.nbytes:
                kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
                result = cudart.cudaMemcpyAsync(
                    self._buffers[name][0], host.ctypes.data, host.nbytes, kind, self._stream
                )
                cuda_check(cudart, result, "cudaMemcpyAsync")
            inputs[name] = host
        outputs: dict[str, np.ndarray] = {}
        for name in self._engine_outputs:
            shape = _dims(self._context.get_tensor_shape(name))
            if any(size < 0 for size in shape):
                raise BackendError(
                    f"TensorRT cannot size output {name!r} of the {precision} engine before running it "
                    "(data-dependent shape), which this backend does not support."
                )
            outputs[name] = np.empty(shape, dtype=self._dtypes[name])
            self._bind(name, outputs[name].nbytes)
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError(f"TensorRT failed to run the {precision} engine: {self._log.summary()}.")
        for name, host in outputs.items():
            if host.nbytes:
                kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
                result = cudart.cudaMemcpyAsync(
                    host.ctypes.data, self._buffers[name][0], host.nbytes, kind, self._stream
                )
                cuda_check(cudart, result, "cudaMemcpyAsync")
        cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        del inputs
        return {name: outputs[name] for name in self._output_names}

    def _bind(self, name: str, nbytes: int) -> None:
        """Give tensor ``name`` a device buffer of at least ``nbytes`` and tell the context its address."""
        pointer, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity or not pointer:
            if pointer:
                cuda_check(self._cudart, self._cudart.cudaFree(pointer), "cudaFree")
                del self._buffers[name]
            # Never zero bytes: TensorRT wants a valid address even for an empty tensor.
            capacity = max(nbytes, 256)
            pointer = int(cuda_check(self._cudart, self._cudart.cudaMalloc(capacity), "cudaMalloc"))
            self._buffers[name] = (pointer, capacity)
        if not self._context.set_tensor_address(name, pointer):
            raise BackendError(f"TensorRT rejected the device address of tensor {name!r}.")

    def close(self) -> None:
        """Free the device buffers and the stream; the runner cannot run afterwards."""
        cudart = self._cudart
        buffers, self._buffers = self._buffers, {}
        for pointer, _ in buffers.values():
            cuda_check(cudart, cudart.cudaFree(pointer), "cudaFree")
        stream, self._stream = self._stream, None
        if stream is not None:
            cuda_check(cudart, cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def __del__(self) -> None:
        # Best effort only: at interpreter exit CUDA may already be torn down.
        with contextlib.suppress(Exception):
            if getattr(self, "_cudart", None) is not None:
                self.close()

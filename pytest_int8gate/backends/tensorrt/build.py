"""Building TensorRT 10.x / 11.x engines on a CUDA GPU: FP32 and explicit-Q/DQ INT8 engines from ONNX, cached,
and whether TensorRT can be used at all.

Written against TensorRT's documented Python API and cuda-python; unverified on TensorRT (it cannot be
installed on this project's CI machines). The TensorRT and CUDA calls go through the seams in ``api`` and
``cuda``, so everything but those calls is tested with a fake standing in for them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from ...cache import ArtifactCache, atomic_write_bytes
from ...errors import BackendError
from ..base import BackendInfo
from .api import TensorRTLog, TensorRTModule, dims_tuple, load_tensorrt, make_logger
from .cuda import (
    INSTALL_HINT,
    SUPPORTED_CUDA_MAJORS,
    CudaCalls,
    cuda_python_version,
    cuda_unavailable_reason,
    current_gpu,
    first_line,
    load_cuda,
    major_version,
)
from .run import TensorRTRunner
from .shapes import check_batch_sizes, network_profile_shapes, onnx_input_dims

if TYPE_CHECKING:
    import tensorrt as trt  # type: ignore[import-not-found,import-untyped,unused-ignore]

_LOG = logging.getLogger("pytest_int8gate.backends.tensorrt")

#: Bump when the way engines are built changes, so that old cached engines are never loaded.
#: 2: TF32 cleared in INT8 engines too; a profile for every dynamic input, also at batch size 1.
ENGINE_CACHE_FORMAT = 2
PRECISIONS = ("fp32", "int8")
DEFAULT_BATCH_SIZES = (1, 32, 32)
MIN_TENSORRT_MAJOR = 10
#: TensorRT majors this backend is written for (its API was reviewed against 10.16 and 11.1).
SUPPORTED_TENSORRT_MAJORS = (10, 11)
#: Parser errors listed in a failure message; the rest are counted.
MAX_PARSER_ERRORS_SHOWN = 5
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: TensorRT's pip wheels name the CUDA major they are built for: tensorrt-cu12, tensorrt_cu13_libs, ...
_TENSORRT_WHEEL = re.compile(r"^tensorrt[-_.]cu(\d+)(?:[-_.](?:libs|bindings))?$", re.IGNORECASE)


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


# ---------------------------------------------------------------------------------------------------------
# Availability.


def unavailable_reason() -> str | None:
    """None when TensorRT, cuda-python and a CUDA GPU are all present; otherwise why not, as a clause."""
    try:
        trt_module = importlib.import_module("tensorrt")
    except ModuleNotFoundError as exc:
        if exc.name == "tensorrt":
            return f"the 'tensorrt' Python package is not installed ({INSTALL_HINT})"
        return f"the 'tensorrt' Python package cannot be imported ({first_line(exc)})"
    except Exception as exc:  # a broken install raises ImportError, OSError or the wheel stub's error
        return f"the 'tensorrt' Python package cannot be imported ({first_line(exc)})"
    if not hasattr(trt_module, "Builder"):
        # An empty namespace package, e.g. left by installing only tensorrt-stubs.
        return f"the 'tensorrt' Python package is not installed, only its type stubs ({INSTALL_HINT})"
    version = str(getattr(trt_module, "__version__", "unknown"))
    if major_version(version) < MIN_TENSORRT_MAJOR:
        return (
            f"TensorRT {version} is installed but this backend needs TensorRT {MIN_TENSORRT_MAJOR} or newer"
        )
    mismatch = cuda_pairing_reason(tensorrt_wheel_cuda_major(), cuda_python_version())
    if mismatch is not None:
        return mismatch
    return cuda_unavailable_reason()


def tensorrt_wheel_cuda_major() -> int | None:
    """The CUDA major the installed TensorRT wheel is built for (tensorrt-cuNN); None when not known."""
    majors = set()
    for distribution in importlib.metadata.distributions():
        match = _TENSORRT_WHEEL.match(distribution.name or "")
        if match:
            majors.add(int(match.group(1)))
    return majors.pop() if len(majors) == 1 else None


def cuda_pairing_reason(tensorrt_cuda_major: int | None, cuda_python: str) -> str | None:
    """Why TensorRT and cuda-python cannot work together (built for different CUDA majors), or None.

    cuda-python N links CUDA N and needs a driver for CUDA N; a TensorRT wheel built for CUDA M loads the
    CUDA M runtime. Mixing the two fails on machines whose driver supports only the older one.
    """
    cuda_major = major_version(cuda_python)
    if tensorrt_cuda_major is None or cuda_major == 0 or tensorrt_cuda_major == cuda_major:
        return None
    extra = (
        f"pip install 'pytest-int8gate[tensorrt-cu{tensorrt_cuda_major}]'"
        if tensorrt_cuda_major in SUPPORTED_CUDA_MAJORS
        else INSTALL_HINT
    )
    return (
        f"TensorRT is built for CUDA {tensorrt_cuda_major} (tensorrt-cu{tensorrt_cuda_major}) but "
        f"cuda-python "
        f"{cuda_python} is built for CUDA {cuda_major}; install a matching pair ({extra})"
    )


# ---------------------------------------------------------------------------------------------------------
# Building.


class TensorRTBackend:
    """Builds strongly typed TensorRT engines, TF32 off: FP32 from the FP32 model, INT8 from the Q/DQ model.

    Engines are cached under ``cache_dir`` (in memory when it is None) by :func:`engine_cache_key`.
    ``tensorrt`` and ``cuda`` default to the installed TensorRT and cuda-python; anything with the same
    surface (:class:`~.api.TensorRTModule`, :class:`~.cuda.CudaCalls`) can stand in for them.
    """

    name = "tensorrt"

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        workspace_bytes: int = 1 << 30,
        batch_sizes: tuple[int, int, int] = DEFAULT_BATCH_SIZES,
        *,
        tensorrt: TensorRTModule | None = None,
        cuda: CudaCalls | None = None,
    ) -> None:
        if tensorrt is None or cuda is None:
            reason = unavailable_reason()
            if reason is not None:
                raise BackendError(f"the TensorRT backend cannot be used because {reason}.")
        if workspace_bytes <= 0:
            raise BackendError(f"TensorRT workspace_bytes must be positive; got {workspace_bytes}.")
        check_batch_sizes(*batch_sizes)
        self._trt = tensorrt if tensorrt is not None else load_tensorrt()
        self._cuda = cuda if cuda is not None else load_cuda()
        self.workspace_bytes = workspace_bytes
        self.batch_sizes = batch_sizes
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.trt_version = str(self._trt.__version__)
        self._major = major_version(self.trt_version)
        self.gpu = current_gpu(self._cuda.runtime)
        self._disk = ArtifactCache(self.cache_dir) if self.cache_dir is not None else None
        self._memory: dict[str, bytes] = {}
        self._log = TensorRTLog()
        # TensorRT requires the logger and runtime to outlive every engine; runners keep references too.
        self._logger = make_logger(self._trt, self._log)
        self._runtime = self._trt.Runtime(self._logger)

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
            # TF32 rounds float matmul/conv inputs to 10 mantissa bits: cleared in both engines, so that the
            # INT8 engine's float layers compute what the FP32 reference computes and only INT8 differs.
            "tf32": "cleared",
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
        options["tf32"] = "off"
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
            tensorrt=self._trt,
            cuda=self._cuda,
            output_names=tuple(output.name for output in model.graph.output),
            info=info,
            log=self._log,
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
        tensorrt = self._trt
        self._log.clear()
        builder = tensorrt.Builder(self._logger)
        # TensorRT 11 networks are always strongly typed and deprecate the flag; 10.x must ask for it so
        # that the Q/DQ nodes, not builder precision flags, decide every layer's precision.
        flags = 0 if self._major >= 11 else 1 << int(tensorrt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = tensorrt.OnnxParser(network, self._logger)
        if not parser.parse(model_bytes):
            raise BackendError(
                f"TensorRT could not parse the {precision} model: "
                f"{format_parser_errors(_parser_errors(parser))}."
            )
        config = builder.create_builder_config()
        config.set_memory_pool_limit(tensorrt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        # TensorRT enables TF32 by default; see _settings. Polygraphy clears it by default too.
        config.clear_flag(tensorrt.BuilderFlag.TF32)
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
        dims = self._trt.Dims
        shapes: dict[str, tuple[int, ...]] = {}
        for index in range(network.num_inputs):
            tensor = network.get_input(index)
            if tensor.is_shape_tensor:
                raise BackendError(
                    f"input {tensor.name!r} is a shape tensor, which the TensorRT backend cannot feed; "
                    "export the model with that input folded into a constant."
                )
            shapes[tensor.name] = dims_tuple(tensor.shape)
        dynamic = network_profile_shapes(shapes, onnx_input_dims(model), self.batch_sizes)
        if not dynamic:
            return
        profile = builder.create_optimization_profile()
        for name, (low, best, high) in dynamic.items():
            try:
                profile.set_shape(name, dims(list(low)), dims(list(best)), dims(list(high)))
            except (RuntimeError, TypeError, ValueError) as exc:  # the bindings raise RuntimeError on refusal
                raise BackendError(
                    f"TensorRT rejected the optimisation profile of input {name!r} (min {list(low)}, opt "
                    f"{list(best)}, max {list(high)}): {first_line(exc).rstrip('.')}."
                ) from exc
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
                _LOG.warning("ignoring the TensorRT timing cache %s: %s", path, first_line(exc))
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

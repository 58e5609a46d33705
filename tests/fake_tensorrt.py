"""A stand-in for the ``tensorrt`` module and cuda-python's runtime, for the TensorRT backend's tests.

It behaves as the TensorRT 10/11 Python bindings do where the backend depends on it (as read in TensorRT's
python/src/infer/pyCore.cpp and Polygraphy's TensorRT runner): building a network that has a dynamic input
and no optimisation profile fails; ``IOptimizationProfile.set_shape`` raises RuntimeError on inconsistent
shapes; ``set_input_shape`` returns False outside the profile; ``execute_async_v3`` takes the stream as an
int; an ``IOutputAllocator`` is asked for memory (``reallocate_output_async``, else ``reallocate_output``)
and then told the shape. TF32 is on in a new builder config, as in TensorRT.

The fake GPU keeps device memory in ctypes buffers at real addresses: copies are real ``memmove`` calls, and
the fake engine refuses an address that is not a live device buffer of the right size (or, for a tensor
TensorRT keeps on the host, one that is). The engine computes with ONNX Runtime on the CPU.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from pytest_int8gate.backends.tensorrt import CudaCalls

ALIGNMENT = 256


# --- CUDA ----------------------------------------------------------------------------------------------


class CudaErrorT(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400


class CudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeStream:
    """An opaque ``cudaStream_t``. ``int(stream)`` is deprecated in cuda-bindings 13: refused here."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        raise AssertionError("int(cudaStream_t) is deprecated; use get_cuda_native_handle")

    __index__ = __int__


class FakeCudaRuntime:
    """``cuda.bindings.runtime`` with one device whose memory is host memory."""

    cudaError_t = CudaErrorT
    cudaMemcpyKind = CudaMemcpyKind

    def __init__(self, *, device_count: int = 1, count_error: CudaErrorT = CudaErrorT.cudaSuccess) -> None:
        self.device_count = device_count
        self.count_error = count_error
        self.allocations: dict[int, tuple[ctypes.Array[ctypes.c_char], int]] = {}
        self.streams: dict[int, FakeStream] = {}
        self.fail_free: set[int] = set()
        self.fail_stream_destroy = False
        self.malloc_sizes: list[int] = []
        self._handles = itertools.count(0x1000)

    def calls(self, version: str = "13.0.1") -> CudaCalls:
        return CudaCalls(self, self.native_handle, version)  # type: ignore[arg-type]

    def native_handle(self, stream: FakeStream) -> int:
        return stream.handle

    def cudaGetDeviceCount(self) -> tuple[CudaErrorT, int]:
        return self.count_error, self.device_count if self.count_error == CudaErrorT.cudaSuccess else 0

    def cudaGetErrorString(self, error: CudaErrorT) -> tuple[CudaErrorT, bytes]:
        return CudaErrorT.cudaSuccess, f"description of {error.name}".encode()

    def cudaGetDevice(self) -> tuple[CudaErrorT, int]:
        return CudaErrorT.cudaSuccess, 0

    def cudaGetDeviceProperties(self, device: int) -> tuple[CudaErrorT, Any]:
        return CudaErrorT.cudaSuccess, SimpleNamespace(name=b"Fake GPU\x00\x00", major=8, minor=6)

    def cudaMalloc(self, size: int) -> tuple[CudaErrorT, int]:
        # cudaMalloc memory is aligned to at least 256 bytes.
        buffer = (ctypes.c_char * (size + ALIGNMENT))()
        pointer = -(-ctypes.addressof(buffer) // ALIGNMENT) * ALIGNMENT
        self.allocations[pointer] = (buffer, size)
        self.malloc_sizes.append(size)
        return CudaErrorT.cudaSuccess, pointer

    def cudaFree(self, pointer: int) -> tuple[CudaErrorT]:
        if pointer in self.fail_free or pointer not in self.allocations:
            return (CudaErrorT.cudaErrorInvalidValue,)
        del self.allocations[pointer]
        return (CudaErrorT.cudaSuccess,)

    def cudaMemcpyAsync(
        self, dst: int, src: int, count: int, kind: CudaMemcpyKind, stream: FakeStream
    ) -> tuple[CudaErrorT]:
        if stream.handle not in self.streams:
            return (CudaErrorT.cudaErrorInvalidResourceHandle,)
        device = dst if kind == CudaMemcpyKind.cudaMemcpyHostToDevice else src
        host = src if kind == CudaMemcpyKind.cudaMemcpyHostToDevice else dst
        if not self.is_device(device, count) or self.is_device(host, 1):
            return (CudaErrorT.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, count)
        return (CudaErrorT.cudaSuccess,)

    def cudaStreamCreate(self) -> tuple[CudaErrorT, FakeStream]:
        stream = FakeStream(next(self._handles))
        self.streams[stream.handle] = stream
        return CudaErrorT.cudaSuccess, stream

    def cudaStreamDestroy(self, stream: FakeStream) -> tuple[CudaErrorT]:
        if self.fail_stream_destroy or self.streams.pop(stream.handle, None) is None:
            return (CudaErrorT.cudaErrorInvalidResourceHandle,)
        return (CudaErrorT.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: FakeStream) -> tuple[CudaErrorT]:
        ok = stream.handle in self.streams
        return (CudaErrorT.cudaSuccess if ok else CudaErrorT.cudaErrorInvalidResourceHandle,)

    def is_device(self, pointer: int, nbytes: int) -> bool:
        """Whether [pointer, pointer + nbytes) lies inside one live device allocation."""
        return any(
            start <= pointer and pointer + nbytes <= start + size
            for start, (_, size) in self.allocations.items()
        )


# --- TensorRT ------------------------------------------------------------------------------------------


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, msg: str) -> None:  # overridden by the backend's logger
        raise NotImplementedError


class IOutputAllocator:
    def __init__(self) -> None:
        pass


class Dims(tuple):  # type: ignore[type-arg]
    def __new__(cls, values: Any = ()) -> Dims:
        return super().__new__(cls, (int(value) for value in values))


class BuilderFlag(enum.IntEnum):
    TF32 = 7
    DEBUG = 9


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class TensorLocation(enum.IntEnum):
    DEVICE = 0
    HOST = 1


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7
    INT64 = 8


_NUMPY = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}
_FROM_ONNX = {
    onnx.TensorProto.FLOAT: DataType.FLOAT,
    onnx.TensorProto.FLOAT16: DataType.HALF,
    onnx.TensorProto.INT8: DataType.INT8,
    onnx.TensorProto.INT32: DataType.INT32,
    onnx.TensorProto.BOOL: DataType.BOOL,
    onnx.TensorProto.UINT8: DataType.UINT8,
    onnx.TensorProto.INT64: DataType.INT64,
    onnx.TensorProto.BFLOAT16: DataType.BF16,
}


def nptype(trt_type: DataType) -> type:
    if trt_type in _NUMPY:
        return _NUMPY[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


@dataclass
class FakeState:
    """What the fake saw and how it should misbehave; shared by every object of one fake module."""

    cuda: FakeCudaRuntime
    host_outputs: frozenset[str] = frozenset()
    reject_profile: bool = False
    builds: list[dict[str, Any]] = field(default_factory=list)
    executions: list[dict[str, tuple[int, ...]]] = field(default_factory=list)
    stream_handles: list[Any] = field(default_factory=list)


@dataclass
class FakeTensor:
    name: str
    shape: Dims
    dtype: DataType
    is_shape_tensor: bool = False


class FakeParserError:
    def __init__(self, node_name: str, node: int, desc: str) -> None:
        self._node_name, self._node, self._desc = node_name, node, desc

    def node_name(self) -> str:
        return self._node_name

    def node(self) -> int:
        return self._node

    def desc(self) -> str:
        return self._desc


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[FakeTensor] = []
        self.model_bytes = b""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]


class FakeOnnxParser:
    def __init__(self, network: FakeNetwork, logger: ILogger) -> None:
        self.network = network
        self.errors: list[FakeParserError] = []

    def parse(self, model_bytes: bytes) -> bool:
        model = onnx.load_from_string(model_bytes)
        for index, node in enumerate(model.graph.node):
            if node.domain not in ("", "ai.onnx"):
                self.errors.append(
                    FakeParserError(node.name, index, f"No importer registered for op: {node.op_type}")
                )
        if self.errors:
            return False
        initializers = {init.name for init in model.graph.initializer}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            dims = [
                dim.dim_value if dim.HasField("dim_value") else -1 for dim in value.type.tensor_type.shape.dim
            ]
            self.network.inputs.append(
                FakeTensor(value.name, Dims(dims), _FROM_ONNX[value.type.tensor_type.elem_type])
            )
        self.network.model_bytes = model_bytes
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> FakeParserError:
        return self.errors[index]


class FakeProfile:
    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None:
        consistent = len(min) == len(opt) == len(max) and all(
            0 <= low <= best <= high for low, best, high in zip(min, opt, max, strict=True)
        )
        if self.state.reject_profile or not consistent:
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[input] = (Dims(min), Dims(opt), Dims(max))


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"fresh timing cache"

    def serialize(self) -> bytes:
        return self.data


class FakeBuilderConfig:
    def __init__(self) -> None:
        self.flags = {BuilderFlag.TF32}  # TensorRT enables TF32 in a new config
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.profiles: list[FakeProfile] = []
        self.timing_cache: FakeTimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pool_limits[pool] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True


class FakeBuilder:
    state: FakeState

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> FakeNetwork:
        return FakeNetwork(flags)

    def create_builder_config(self) -> FakeBuilderConfig:
        return FakeBuilderConfig()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile(self.state)

    def build_serialized_network(self, network: FakeNetwork, config: FakeBuilderConfig) -> bytes | None:
        profile = config.profiles[0].shapes if config.profiles else {}
        self.state.builds.append(
            {"flags": network.flags, "tf32": BuilderFlag.TF32 in config.flags, "profile": dict(profile)}
        )
        for tensor in network.inputs:
            if any(size < 0 for size in tensor.shape) and tensor.name not in profile:
                self.logger.log(
                    Severity.ERROR,
                    "Network has dynamic or shape inputs, but no optimization profile has been defined.",
                )
                return None
        description = {
            "model": network.model_bytes.hex(),
            "profile": {name: [list(dims) for dims in shapes] for name, shapes in profile.items()},
        }
        return json.dumps(description).encode()


class FakeRuntime:
    state: FakeState

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        try:
            description = json.loads(bytes(data))
        except ValueError:
            self.logger.log(Severity.ERROR, "Serialization assertion failed: magic tag mismatch")
            return None
        return FakeEngine(description, self.state, self.logger)


@dataclass
class TensorSpec:
    dtype: DataType
    dims: list[int | str]  # an int, or the name of a size (-1 in the engine's shape)


class FakeEngine:
    def __init__(self, description: dict[str, Any], state: FakeState, logger: ILogger) -> None:
        self.state = state
        self.logger = logger
        model_bytes = bytes.fromhex(description["model"])
        model = onnx.load_from_string(model_bytes)
        self.profile = {
            name: [Dims(dims) for dims in shapes] for name, shapes in description["profile"].items()
        }
        initializers = {init.name for init in model.graph.initializer}
        self.inputs = {v.name: self._spec(v) for v in model.graph.input if v.name not in initializers}
        self.outputs = {v.name: self._spec(v) for v in model.graph.output}
        # No graph optimisation: each Q/DQ pair stays a rounding step, as in TensorRT's explicit quantization
        # (ONNX Runtime's fused int8 kernels can saturate on CPUs without VNNI).
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
        dims: list[int | str] = []
        for dim in value.type.tensor_type.shape.dim:
            dims.append(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?"))
        return TensorSpec(_FROM_ONNX[value.type.tensor_type.elem_type], dims)

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, index: int) -> str:
        return [*self.inputs, *self.outputs][index]

    def _tensor(self, name: str) -> TensorSpec:
        return self.inputs[name] if name in self.inputs else self.outputs[name]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        if name in self.inputs:
            return TensorIOMode.INPUT
        return TensorIOMode.OUTPUT if name in self.outputs else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._tensor(name).dtype

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(dim if isinstance(dim, int) else -1 for dim in self._tensor(name).dims)

    def get_tensor_location(self, name: str) -> TensorLocation:
        return TensorLocation.HOST if name in self.state.host_outputs else TensorLocation.DEVICE

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        assert profile_index == 0 and name in self.profile, f"{name} has no profile"
        return list(self.profile[name])

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, Any] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        dims = tuple(int(size) for size in shape)  # pybind11 raises TypeError on anything but ints
        spec = self.engine.inputs.get(name)
        if spec is None or len(dims) != len(spec.dims):
            return False
        if name in self.engine.profile:
            low, _, high = self.engine.profile[name]
            if not all(lo <= size <= hi for lo, size, hi in zip(low, dims, high, strict=True)):
                return False
        elif any(isinstance(d, int) and d != size for d, size in zip(spec.dims, dims, strict=True)):
            return False
        self.input_shapes[name] = dims
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        if name in self.engine.inputs:
            return Dims(self.input_shapes.get(name, self.engine.get_tensor_shape(name)))
        sizes: dict[str, int] = {}
        for input_name, spec in self.engine.inputs.items():
            for axis, dim in enumerate(spec.dims):
                if isinstance(dim, str) and input_name in self.input_shapes:
                    sizes[dim] = self.input_shapes[input_name][axis]
        return Dims(
            dim if isinstance(dim, int) else sizes.get(dim, -1) for dim in self.engine.outputs[name].dims
        )

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if not isinstance(memory, int) or not memory:
            return False
        self.addresses[name] = memory
        return True

    def set_output_allocator(self, name: str, output_allocator: Any) -> bool:
        self.allocators[name] = output_allocator
        return True

    def _placed(self, name: str, address: int, nbytes: int) -> bool:
        """Whether ``address`` is device memory for a device tensor and host memory for a host tensor."""
        cuda = self.engine.state.cuda
        if self.engine.get_tensor_location(name) == TensorLocation.HOST:
            return not cuda.is_device(address, 1)
        return cuda.is_device(address, max(nbytes, 1))

    def _fail(self, message: str) -> bool:
        self.engine.logger.log(Severity.ERROR, message)
        return False

    def execute_async_v3(self, stream_handle: int) -> bool:
        state = self.engine.state
        state.stream_handles.append(stream_handle)
        if type(stream_handle) is not int:  # the binding takes a size_t
            raise TypeError("execute_async_v3(): incompatible function arguments")
        if stream_handle not in state.cuda.streams:
            return self._fail("invalid stream")
        feeds: dict[str, np.ndarray] = {}
        for name, spec in self.engine.inputs.items():
            if name not in self.input_shapes or name not in self.addresses:
                return self._fail(f"input {name} has no shape or address")
            shape = self.input_shapes[name]
            dtype = np.dtype(nptype(spec.dtype))
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if not self._placed(name, self.addresses[name], nbytes):
                return self._fail(f"input {name} is not at a valid address")
            raw = ctypes.string_at(self.addresses[name], nbytes)
            feeds[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        state.executions.append({name: value.shape for name, value in feeds.items()})
        values = self.engine.session.run(list(self.engine.outputs), feeds)
        for (name, spec), value in zip(self.engine.outputs.items(), values, strict=True):
            array = np.ascontiguousarray(value, dtype=nptype(spec.dtype))
            allocator = self.allocators.get(name)
            if allocator is not None:
                current = self.addresses.get(name, 0)
                if hasattr(allocator, "reallocate_output_async"):
                    address = allocator.reallocate_output_async(
                        name, current, array.nbytes, ALIGNMENT, stream_handle
                    )
                else:
                    address = allocator.reallocate_output(name, current, array.nbytes, ALIGNMENT)
                if not address or not self._placed(name, address, array.nbytes):
                    return self._fail(f"the output allocator gave no valid memory for {name}")
                self.addresses[name] = address
                ctypes.memmove(address, array.ctypes.data, array.nbytes)
                allocator.notify_shape(name, Dims(array.shape))
                continue
            expected = tuple(self.get_tensor_shape(name))
            if expected != array.shape:
                return self._fail(f"output {name} has shape {array.shape}, not {expected}, and no allocator")
            if name not in self.addresses or not self._placed(name, self.addresses[name], array.nbytes):
                return self._fail(f"output {name} is not at a valid address")
            ctypes.memmove(self.addresses[name], array.ctypes.data, array.nbytes)
        return True


def fake_tensorrt(
    cuda: FakeCudaRuntime, *, version: str = "11.1.0.106", host_outputs: tuple[str, ...] = ()
) -> tuple[Any, FakeState]:
    """A fake ``tensorrt`` module over ``cuda``'s device, and the state it records."""
    state = FakeState(cuda=cuda, host_outputs=frozenset(host_outputs))
    module = SimpleNamespace(
        __version__=version,
        Builder=type("Builder", (FakeBuilder,), {"state": state}),
        OnnxParser=FakeOnnxParser,
        Runtime=type("Runtime", (FakeRuntime,), {"state": state}),
        ILogger=ILogger,
        IOutputAllocator=IOutputAllocator,
        Dims=Dims,
        BuilderFlag=BuilderFlag,
        MemoryPoolType=MemoryPoolType,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
        TensorIOMode=TensorIOMode,
        TensorLocation=TensorLocation,
        DataType=DataType,
        nptype=nptype,
    )
    return module, state

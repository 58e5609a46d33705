"""The cuda-python calls the TensorRT backend makes, typed as a Protocol, and whether CUDA can be used.

Everything the backend asks of CUDA goes through :class:`CudaCalls`: the real one wraps ``cuda.bindings``
(cuda-python 12.9.1 or newer), and tests hand in a fake with the same surface.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from ...errors import BackendError

INSTALL_HINT = "pip install 'pytest-int8gate[tensorrt]'"
#: The first cuda-python with ``cuda.bindings.utils.get_cuda_native_handle`` (``int(stream)`` is deprecated).
MIN_CUDA_PYTHON = (12, 9, 1)
#: CUDA major versions with a matching pair of TensorRT and cuda-python wheels (extras tensorrt-cu12/-cu13).
SUPPORTED_CUDA_MAJORS = (12, 13)


class CudaError(Protocol):
    """A ``cudaError_t`` member: compares with ``cudaError_t.cudaSuccess``, has a ``name``."""

    @property
    def name(self) -> str: ...


class CudaErrorCodes(Protocol):
    """The members of ``cudaError_t`` the backend names."""

    @property
    def cudaSuccess(self) -> CudaError: ...

    @property
    def cudaErrorInsufficientDriver(self) -> CudaError: ...


class CudaMemcpyKinds(Protocol):
    @property
    def cudaMemcpyHostToDevice(self) -> object: ...

    @property
    def cudaMemcpyDeviceToHost(self) -> object: ...


class CudaDeviceProperties(Protocol):
    @property
    def name(self) -> bytes | str: ...

    @property
    def major(self) -> int: ...

    @property
    def minor(self) -> int: ...


class CudaStream(Protocol):
    """A ``cudaStream_t``, opaque here: :attr:`CudaCalls.native_handle` gives the address TensorRT takes."""


class CudaRuntime(Protocol):
    """The part of ``cuda.bindings.runtime`` the backend calls. Each call returns ``(error, *values)``."""

    @property
    def cudaError_t(self) -> CudaErrorCodes: ...

    @property
    def cudaMemcpyKind(self) -> CudaMemcpyKinds: ...

    def cudaGetDeviceCount(self) -> tuple[CudaError, int]: ...

    def cudaGetErrorString(self, error: CudaError, /) -> tuple[CudaError, bytes]: ...

    def cudaGetDevice(self) -> tuple[CudaError, int]: ...

    def cudaGetDeviceProperties(self, device: int, /) -> tuple[CudaError, CudaDeviceProperties]: ...

    def cudaMalloc(self, size: int, /) -> tuple[CudaError, int]: ...

    def cudaFree(self, pointer: int, /) -> tuple[CudaError]: ...

    def cudaMemcpyAsync(
        self, dst: int, src: int, count: int, kind: object, stream: CudaStream, /
    ) -> tuple[CudaError]: ...

    def cudaStreamCreate(self) -> tuple[CudaError, CudaStream]: ...

    def cudaStreamDestroy(self, stream: CudaStream, /) -> tuple[CudaError]: ...

    def cudaStreamSynchronize(self, stream: CudaStream, /) -> tuple[CudaError]: ...


@dataclass(frozen=True)
class CudaCalls:
    """The CUDA runtime, the stream-handle conversion and the cuda-python version, as one seam."""

    runtime: CudaRuntime
    native_handle: Callable[[CudaStream], int]
    version: str

    @property
    def major(self) -> int:
        return major_version(self.version)


def load_cuda() -> CudaCalls:
    """cuda-python's runtime module and handle conversion; ImportError when either cannot be imported."""
    runtime = importlib.import_module("cuda.bindings.runtime")
    utils = importlib.import_module("cuda.bindings.utils")
    native_handle = cast(Callable[[CudaStream], int], utils.get_cuda_native_handle)
    return CudaCalls(cast(CudaRuntime, runtime), native_handle, cuda_python_version())


def cuda_python_version() -> str:
    """The installed cuda-python (or cuda-bindings) version, "unknown" when neither has metadata."""
    for distribution in ("cuda-python", "cuda-bindings"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(distribution)
    return "unknown"


def cuda_unavailable_reason(cuda: CudaCalls | None = None) -> str | None:
    """None when cuda-python imports and sees at least one CUDA GPU; otherwise why not, as a clause."""
    if cuda is None:
        try:
            cuda = load_cuda()
        except ImportError as exc:
            too_old = _too_old(cuda_python_version())
            if too_old:
                return too_old
            return f"the 'cuda-python' package cannot be imported ({first_line(exc)}; {INSTALL_HINT})"
    too_old = _too_old(cuda.version)
    if too_old:
        return too_old
    runtime = cuda.runtime
    try:
        error, count = runtime.cudaGetDeviceCount()
    except Exception as exc:  # cuda-python raises when it cannot load the CUDA driver library at all
        return f"no CUDA GPU is visible (cudaGetDeviceCount raised {first_line(exc)})"
    if error == runtime.cudaError_t.cudaErrorInsufficientDriver:
        # cuda-python N is built against CUDA N and needs a driver for CUDA N; an older driver says only this.
        older = (
            f", or install the CUDA {cuda.major - 1} builds: pip install "
            f"'pytest-int8gate[tensorrt-cu{cuda.major - 1}]'"
            if cuda.major - 1 in SUPPORTED_CUDA_MAJORS
            else ""
        )
        return (
            f"the NVIDIA driver is too old for cuda-python {cuda.major} (cudaGetDeviceCount returned "
            f"{cuda_error_text(runtime, error)}); update the driver{older}"
        )
    if error != runtime.cudaError_t.cudaSuccess:
        return f"no CUDA GPU is visible (cudaGetDeviceCount returned {cuda_error_text(runtime, error)})"
    if int(count) < 1:
        return "no CUDA GPU is visible"
    return None


def _too_old(version: str) -> str | None:
    parts = tuple(int(part) if part.isdigit() else 0 for part in version.split(".")[:3])
    if version == "unknown" or parts >= MIN_CUDA_PYTHON:
        return None
    needed = ".".join(map(str, MIN_CUDA_PYTHON))
    return f"cuda-python {version} is installed but this backend needs {needed} or newer ({INSTALL_HINT})"


def cuda_check(runtime: CudaRuntime, result: tuple[Any, ...], call: str) -> Any:
    """The value a cuda-python call returned after its error code, or None; BackendError on failure."""
    error = result[0]
    if error != runtime.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call {call} failed with {cuda_error_text(runtime, error)}.")
    return result[1] if len(result) > 1 else None


def cuda_error_text(runtime: CudaRuntime, error: CudaError) -> str:
    """``cudaErrorX (description)``, or the bare name when the description is unavailable."""
    name = str(getattr(error, "name", error))
    with contextlib.suppress(Exception):
        described = runtime.cudaGetErrorString(error)
        if described[0] == runtime.cudaError_t.cudaSuccess:
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


def current_gpu(runtime: CudaRuntime) -> GpuInfo:
    device = cuda_check(runtime, runtime.cudaGetDevice(), "cudaGetDevice")
    props = cuda_check(runtime, runtime.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    raw_name = props.name
    name = raw_name.decode(errors="replace") if isinstance(raw_name, bytes) else str(raw_name)
    return GpuInfo(name=name.rstrip("\x00").strip(), compute_capability=f"{props.major}{props.minor}")


def major_version(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

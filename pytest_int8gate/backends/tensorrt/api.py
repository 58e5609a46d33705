"""The part of the ``tensorrt`` module the backend uses, as one Protocol (the seam a fake can stand in for),
and the logger that records what TensorRT says.

Every TensorRT name the backend touches is reached through a :class:`TensorRTModule`, so the build and run
logic can be exercised without TensorRT, while the real module stays the default. Under
``.ci/typecheck_tensorrt.py`` the member types come from ``tensorrt-stubs`` (10.x) and from the same stubs
less every member TensorRT 11 removed; under the project's own mypy run, ``tensorrt`` is unknown and they are
``Any``.
"""

from __future__ import annotations

import collections
import importlib
import logging
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    import tensorrt as trt  # type: ignore[import-not-found,import-untyped,unused-ignore]

_LOG = logging.getLogger("pytest_int8gate.backends.tensorrt")


class TensorRTModule(Protocol):
    """The ``tensorrt`` members the backend uses (each exists in TensorRT 10.x and 11.x)."""

    @property
    def __version__(self) -> str: ...

    # Building.
    @property
    def Builder(self) -> type[trt.Builder]: ...

    @property
    def OnnxParser(self) -> type[trt.OnnxParser]: ...

    @property
    def BuilderFlag(self) -> type[trt.BuilderFlag]: ...

    @property
    def MemoryPoolType(self) -> type[trt.MemoryPoolType]: ...

    @property
    def NetworkDefinitionCreationFlag(self) -> type[trt.NetworkDefinitionCreationFlag]: ...

    @property
    def Dims(self) -> type[trt.Dims]: ...

    # Loading and running.
    @property
    def Runtime(self) -> type[trt.Runtime]: ...

    @property
    def ILogger(self) -> type[trt.ILogger]: ...

    @property
    def IOutputAllocator(self) -> type[trt.IOutputAllocator]: ...

    @property
    def TensorIOMode(self) -> type[trt.TensorIOMode]: ...

    @property
    def TensorLocation(self) -> type[trt.TensorLocation]: ...

    def nptype(self, trt_type: trt.DataType, /) -> Any: ...


def load_tensorrt() -> TensorRTModule:
    """The installed ``tensorrt`` module (ImportError when it cannot be imported)."""
    return cast(TensorRTModule, importlib.import_module("tensorrt"))


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple of ints (-1 for a size not known yet)."""
    return tuple(int(dims[axis]) for axis in range(len(dims)))


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


def make_logger(tensorrt: TensorRTModule, log: TensorRTLog) -> trt.ILogger:
    """A ``tensorrt.ILogger`` that records into ``log``."""
    error_level = int(tensorrt.ILogger.Severity.ERROR)
    warning_level = int(tensorrt.ILogger.Severity.WARNING)
    base: Any = tensorrt.ILogger

    class RecordingLogger(base):  # type: ignore[misc]
        def __init__(self) -> None:
            base.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            log.record(int(severity), msg, error_level=error_level, warning_level=warning_level)

    logger: trt.ILogger = RecordingLogger()
    return logger

"""The backend protocol: what a :class:`Runner` (a built engine) and a :class:`Backend` (builds runners)
offer, and :class:`BackendInfo`, the description every result carries. Backends import this module, never
the package, so that choosing a backend (the package's ``get_backend``) imports no cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, TypeVar

import numpy as np
import onnx


@dataclass(frozen=True)
class BackendInfo:
    """What ran a model: shown in headers, failure text and reports."""

    backend: str
    version: str
    device: str
    precision: str
    mode: str = ""
    options: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        mode = f" {self.mode}" if self.mode else ""
        return f"{self.backend} {self.version} {self.device}{mode}"

    def as_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "version": self.version,
            "device": self.device,
            "precision": self.precision,
            "mode": self.mode,
            "options": dict(self.options),
        }


class Runner(Protocol):
    """A built engine: runs one batch of named feeds and returns every graph output by name.

    A runner holds native resources (an ONNX Runtime session, CUDA buffers): ``close()`` releases them
    and may be called any number of times; ``with`` closes it on the way out.
    """

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def describe(self) -> BackendInfo: ...

    def close(self) -> None: ...

    def __enter__(self: _R) -> _R: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


_R = TypeVar("_R")


class ClosingRunner:
    """The context-manager half of :class:`Runner` for classes that define ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Backend(Protocol):
    """Builds FP32 and INT8 runners; ``int8_runner`` receives an explicit Q/DQ model."""

    name: str

    def fp32_runner(self, model: onnx.ModelProto) -> Runner: ...

    def int8_runner(self, model: onnx.ModelProto) -> Runner: ...

    def describe(self) -> BackendInfo: ...

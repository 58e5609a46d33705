"""The backend protocol: build a :class:`Runner` from an ONNX model, run feeds, describe itself.

Every backend receives the same artefacts: the prepared FP32 model and the project's Q/DQ model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from ..errors import BackendError

BACKEND_NAMES = ("onnxruntime", "tensorrt", "auto")
ORT_MODES = ("simulated", "fused")


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
    """A built engine: runs one batch of named feeds and returns every graph output by name."""

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def describe(self) -> BackendInfo: ...


class Backend(Protocol):
    """Builds FP32 and INT8 runners; ``int8_runner`` receives an explicit Q/DQ model."""

    name: str

    def fp32_runner(self, model: onnx.ModelProto) -> Runner: ...

    def int8_runner(self, model: onnx.ModelProto) -> Runner: ...

    def describe(self) -> BackendInfo: ...


def get_backend(
    name: str = "onnxruntime",
    *,
    ort_mode: str = "simulated",
    threads: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
) -> Backend:
    """The backend called ``name``; ``auto`` picks TensorRT when it and a GPU are present.

    ``cache_dir`` holds TensorRT's serialized engines; ``batch_size`` is the largest batch an engine
    must accept (its optimisation profile).
    """
    if name not in BACKEND_NAMES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}.")
    if name in ("tensorrt", "auto"):
        from . import tensorrt as trt_backend

        reason = trt_backend.unavailable_reason()
        if reason is None:
            return trt_backend.TensorRTBackend(cache_dir=cache_dir, batch_sizes=(1, batch_size, batch_size))
        if name == "tensorrt":
            raise BackendError(f"--int8-backend=tensorrt was requested but {reason}.")
    from .onnxruntime import OrtBackend

    return OrtBackend(mode=ort_mode, threads=threads)

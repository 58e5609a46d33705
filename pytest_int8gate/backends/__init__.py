"""The backend protocol: build a :class:`Runner` from an ONNX model, run feeds, describe itself.

Every backend receives the same artefacts: the prepared FP32 model and the project's Q/DQ model.
"""

from __future__ import annotations

import os

# the names live in choices.py, the protocol in base.py; these paths stay importable
from ..choices import BACKEND_NAMES as BACKEND_NAMES
from ..choices import ORT_MODES as ORT_MODES
from ..errors import BackendError
from .base import Backend as Backend
from .base import BackendInfo as BackendInfo
from .base import Runner as Runner


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
